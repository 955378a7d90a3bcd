"""Offline graph optimisation: the graphs ONNX Runtime would build at every session start, saved once.

``optimize_graph`` runs an ONNX Runtime CPU session over a graph with ``optimized_model_filepath`` set, so
the saved graph already has constants folded and the fusions of the chosen level applied:

* ``basic``    constant folding, redundant node elimination (Identity, Cast chains), MatMul + Add -> Gemm;
* ``extended`` plus the transformer fusions ORT knows for CPU: LayerNormalization,
               SimplifiedLayerNormalization (RMSNorm), SkipLayerNormalization, Gelu / FastGelu / BiasGelu,
               FusedMatMul (MatMul with a transposed or scaled input), attention where the pattern
               matches. Portable between CPUs (no layout-specific kernels), so this is what the export saves;
* ``all``      plus layout transformations specific to this CPU (NCHWc); not saved by the exporter.

``transformer_fusions`` additionally runs ``onnxruntime.transformers.optimizer`` (python fusion passes,
``model_type="bert"``: LayerNorm / SkipLayerNorm / SimplifiedLayerNorm, Gelu / FastGelu, attention) and
reports which fused operators it produced; the exporter applies it before the ORT pass with
``--fusions transformer``.
"""

from __future__ import annotations

import collections
from pathlib import Path

from apt_policy.runtime.manifest import GraphSpec, OptimizedGraph

LEVELS = ("basic", "extended", "all")


def optimize_graph(
    src: str | Path,
    dst: str | Path,
    level: str = "extended",
    external_data: bool = False,
    threads: int = 1,
) -> None:
    """Save ONNX Runtime's CPU-optimised version of ``src`` (``level`` in LEVELS) to ``dst``.

    With ``external_data`` the weights go to ``<dst name>.data`` beside it (graphs over 2 GB).
    """
    import onnxruntime as ort

    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    options.optimized_model_filepath = str(dst)
    options.intra_op_num_threads = threads
    if external_data:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", f"{Path(dst).name}.data"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    if not Path(dst).is_file():
        raise RuntimeError(f"ONNX Runtime did not write the optimised graph {dst}")


def transformer_fusions(src: str | Path, dst: str | Path, external_data: bool = False) -> dict[str, int]:
    """``onnxruntime.transformers.optimizer`` fusion passes on ``src`` -> ``dst``; fused operator counts."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    model = optimizer.optimize_model(
        str(src),
        model_type="bert",
        num_heads=0,  # detected from the graph where an attention pattern matches
        hidden_size=0,
        optimization_options=FusionOptions("bert"),
        opt_level=0,  # python fusions only; the ORT pass (optimize_graph) follows
    )
    stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    model.save_model_to_file(str(dst), use_external_data_format=external_data)
    return stats


def op_counts(path: str | Path) -> dict[str, int]:
    """Operator type -> count (``domain::type`` for contrib ops) of a saved graph, weights not loaded."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter(
        f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in model.graph.node
    )
    return dict(counts.most_common())


def optimize_graphs(
    directory: str | Path, graphs: dict[str, GraphSpec], fusions: bool = False, level: str = "extended"
) -> dict[str, GraphSpec]:
    """Save ``<name>.opt.onnx`` beside every graph in ``directory``; the specs with ``optimized`` set.

    ``fusions``: run the transformer optimizer's python fusions first (``transformer_fusions``).
    """
    import dataclasses
    import tempfile

    import onnxruntime as ort

    root = Path(directory)
    out: dict[str, GraphSpec] = {}
    for name, spec in graphs.items():
        file = f"{name}.opt.onnx"
        external = bool(spec.external_data)
        stats: dict[str, int] = {}
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            src = root / spec.file
            if fusions:
                fused = Path(tmp) / spec.file
                stats = transformer_fusions(src, fused, external_data=external)
                src = fused
            optimize_graph(src, root / file, level=level, external_data=external)
        data = (f"{file}.data",) if external and (root / f"{file}.data").is_file() else ()
        optimized = OptimizedGraph(file, level, ort.__version__, data, stats)
        out[name] = dataclasses.replace(spec, optimized=optimized)
    return out
