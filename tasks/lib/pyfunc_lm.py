"""A registered language model: raw strings in, one vector per text out (its body's states
averaged over the text's tokens), for search, clustering or a quick linear probe.

What other runs reuse are its artifacts, the files of the folder pretrain wrote (weights,
checkpoint, tokenizer), which `pretrain.init_from: models:/<name>@<alias>` downloads.
Logged as an MLflow "model from code" like the classifier: only `models/` may be imported.
"""

import json
from pathlib import Path

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel
from safetensors.torch import load_model
from tokenizers import Tokenizer

from models.build import build_body
from models.inference import embed, encode, vector_columns
from models.requests import texts_of

MAX_TEXTS = 1000


class TextEncoder(PythonModel):
    def load_context(self, context) -> None:
        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.tokenizer = Tokenizer.from_file(context.artifacts["tokenizer"])
        self.body = build_body(meta["model_config"])
        load_model(self.body, context.artifacts["body"])
        self.body.eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        vectors = embed(self.body, encode(self.tokenizer, texts_of(model_input, MAX_TEXTS)))
        return pd.DataFrame(vectors, columns=vector_columns(vectors.shape[1]))


set_model(TextEncoder())
