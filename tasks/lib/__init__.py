"""What the stage and command modules of `tasks/` share; nothing here is run on its own."""
