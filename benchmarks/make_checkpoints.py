"""Make the checkpoints the merge benchmark compares on (run with the fusionkit environment).

* MiniLM: the base (BertForSequenceClassification with the seeded 2-label head the experts started from) and
  the smoke ``sentiment`` and ``subjectivity`` experts (same shapes: both 2 labels).
* SmolLM2-135M: the converted base and three variants, each fine-tuned for a few AdamW steps on different
  text (they need not be good, only different).

    python benchmarks/make_checkpoints.py /tmp/fk-bench
"""
import shutil
import sys
from pathlib import Path

import torch

import fusionkit as fk
from fusionkit.data.assets import base_path
from fusionkit.models.heads import base_state


def minilm(out: Path) -> None:
    zoo = fk.build_zoo("multitask", "smoke", quiet=True)
    for name in ("sentiment", "subjectivity"):
        dest = out / "minilm" / name
        if not dest.exists():
            shutil.copytree(zoo.expert(name).path, dest)
    base = out / "minilm" / "base"
    if not base.exists():
        model, tok = zoo.expert("sentiment").load()
        model.load_state_dict(base_state("minilm", zoo.expert("sentiment").recipe["labels"], seed=0))
        model.save_pretrained(base)
        tok.save_pretrained(base)


def smollm(out: Path, steps: int = 4) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = base_path("smollm2-135m")
    base = out / "smollm2" / "base"
    if not base.exists():
        shutil.copytree(src, base)
    texts = {name: fk.load_task(name).data["train"]["text"][:64] for name in ("sentiment", "topic", "author")}
    for name, corpus in texts.items():
        dest = out / "smollm2" / name
        if dest.exists():
            continue
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(src)
        tok = AutoTokenizer.from_pretrained(src)
        tok.pad_token = tok.pad_token or tok.eos_token
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for step in range(steps):
            batch = tok(corpus[4 * step:4 * step + 4], truncation=True, max_length=48, padding=True,
                        return_tensors="pt")
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            model(**batch, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
        model.save_pretrained(dest)
        tok.save_pretrained(dest)
        print("made", dest)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fk-bench")
    minilm(out)
    smollm(out)
