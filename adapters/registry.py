"""The one registry of model adapters: name -> class. Explicit, no import side effects."""
from __future__ import annotations


from adapters.base import Adapter
from core.errors import AdapterError



def _vilt():
    from adapters.vilt import ViltAdapter

    return ViltAdapter


def _lxmert():
    from adapters.lxmert import LxmertAdapter

    return LxmertAdapter


def _kdvlp():
    from adapters.kdvlp import KdvlpAdapter

    return KdvlpAdapter


def _llava():
    from adapters.llava import LlavaAdapter

    return LlavaAdapter


def _qwen2_vl():
    from adapters.qwen2_vl import Qwen2VLAdapter

    return Qwen2VLAdapter


def _idefics3():
    from adapters.idefics3 import Idefics3Adapter

    return Idefics3Adapter


# name -> zero-argument function returning the class (imports stay lazy so `cli.py models` is fast)
ADAPTERS = {
    "vilt": _vilt,
    "lxmert": _lxmert,
    "kdvlp": _kdvlp,
    "llava": _llava,
    "qwen2_vl": _qwen2_vl,
    "idefics3": _idefics3,
}

# Named, ready-to-use models: what `cli.py models` lists and the app offers.
# name -> (adapter, source). Local demo checkpoints ship in demo/models/.
MODELS = {
    "vilt-easyvqa": ("vilt", "demo/models/vilt-easyvqa"),
    "vilt-vqa": ("vilt", "dandelin/vilt-b32-finetuned-vqa"),
    "lxmert-easyvqa": ("lxmert", "demo/models/lxmert-easyvqa"),
    "lxmert-vqa": ("lxmert", "unc-nlp/lxmert-vqa-uncased"),
    "kdvlp-easyvqa": ("kdvlp", "demo/models/kdvlp-easyvqa"),
    # generative: the Ask page shows its answer token by token
    "llava-easyvqa": ("llava", "demo/models/llava-easyvqa"),
}

# Models the app offers with no network (and the demo store records): the shipped easy-VQA demos;
# the first is the Ask page's default model.
DEMO_MODELS = ("lxmert-easyvqa", "kdvlp-easyvqa", "vilt-easyvqa", "llava-easyvqa")


def adapter_class(name: str) -> type[Adapter]:
    if name not in ADAPTERS:
        raise AdapterError(f"unknown adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    try:
        return ADAPTERS[name]()
    except ImportError as e:
        raise AdapterError(f"adapter {name!r} cannot be imported: {e}") from e


def resolve_model(name: str) -> tuple[str, str]:
    """A model name ('vilt-easyvqa'), or 'ADAPTER:SOURCE' for any hub id / directory."""
    if name in MODELS:
        return MODELS[name]
    if ":" in name:
        adapter, _, source = name.partition(":")
        adapter_class(adapter)
        return adapter, source
    raise AdapterError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))} "
                       "(or ADAPTER:HUB_ID_OR_DIR, adapters: " + ", ".join(sorted(ADAPTERS)) + ")")


def load_model(name: str, *, device: str = "cpu") -> Adapter:
    adapter, source = resolve_model(name)
    return adapter_class(adapter).load(source, device=device)
