"""The networks, as plain nn.Module code: no I/O, no Prefect, no MLflow.

Every architecture has a `body` (token ids -> states, embeddings in `body.tok`); a language
model is a body plus its objective's head (`models/objectives/`), a classifier a body plus
pooling and a linear head. `models/build.py` rebuilds any of them from a checkpoint's
`model_config`; `models/inference.py` is the one prediction path. This package ships with
every registered model as its code.
"""
