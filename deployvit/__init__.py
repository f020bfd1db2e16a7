"""deployvit: find the most accurate Vision Transformer that fits a latency budget on a given GPU and
runtime, retrain it, and ship it as a verified ONNX / TensorRT artifact.

The Python API mirrors the command line (README "Python API"); its names are loaded on first use,
so `import deployvit` stays light (no torch):

    import deployvit
    result = deployvit.search(latency="5ms")          # deployvit search --latency 5ms
    deployvit.profile("a100", "vit-small", "tensorrt", estimate=True)
    deployvit.export(result.run_dir)                  # deployvit export --arch RUN
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: name -> "module:attribute" (or "module" for a module), imported on first use
_LAZY = {
    "search": "deployvit.search",  # the package, callable: deployvit.search(...) runs a search
    "profile": "deployvit.api:profile",
    "export": "deployvit.api:export",
    "SearchOutcome": "deployvit.search.api:SearchOutcome",
    "ProfileOutcome": "deployvit.api:ProfileOutcome",
    "ExportOutcome": "deployvit.commands.export:ExportOutcome",
    "Constraints": "deployvit.search.budgets:Constraints",
    "SearchConfig": "deployvit.search.searcher:SearchConfig",
    "Supernet": "deployvit.supernet:Supernet",
    "SearchSpace": "deployvit.spaces:SearchSpace",
    "get_space": "deployvit.spaces:get_space",
    "Arch": "deployvit.arch:Arch",
    "load_arch": "deployvit.arch:load_arch",
    "DEFAULT_TARGET": "deployvit.latency.target:DEFAULT_TARGET",
    "DeployvitError": "deployvit.errors:DeployvitError",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'deployvit' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = importlib.import_module(module)
    value = getattr(value, attribute) if attribute else value
    if attribute:  # a module binds itself here when imported; attributes are cached the same way
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
