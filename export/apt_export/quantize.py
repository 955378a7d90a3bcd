"""int8 graphs: dynamic quantisation of the weight MatMuls (ONNX Runtime ``quantize_dynamic``).

Weights become int8 (per output channel, symmetric); activations are quantised to uint8 per tensor at run
time (``DynamicQuantizeLinear``), so no calibration data is needed. Only MatMuls whose second input is a
constant weight are quantised (``MatMulConstBOnly``): attention's activation x activation products,
softmax, norms, rotary and the flow integration stay float32. The torch exporter writes a ``Linear`` on a
2-D input as ``Gemm(transB=1)`` and ONNX Runtime's basic optimisation (run first, to fold the exporter's
Identity/Transpose chains into weight initializers) turns MatMul + Add into Gemm too; dynamic quantisation
does not handle Gemm, so those are rewritten as ``MatMul`` (weight transposed once) + ``Add`` (bias).

On x86 with AVX512-VNNI / AVX-VNNI, ONNX Runtime runs the u8 x s8 products with VNNI; on CPUs without
VNNI the u8 x s8 path can saturate (see ORT's quantisation docs: ``reduce_range``); the accuracy of an
int8 export is measured against fp32 by ``apt-export verify`` and reported, not assumed.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from apt_policy.runtime.manifest import GraphSpec, Manifest
from onnx import helper, numpy_helper

from .optimize import optimize_graph


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite ``Gemm(A, W, b)`` with a constant W (alpha = beta = 1, transA = 0) as MatMul + Add, in place.

    Returns the number of Gemms rewritten. Weights shared by several Gemms are transposed once.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    transposed: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.domain not in ("", "ai.onnx")
            or len(node.input) < 2
            or node.input[1] not in inits
            or attrs.get("transA", 0) != 0
            or float(attrs.get("alpha", 1.0)) != 1.0
            or float(attrs.get("beta", 1.0)) != 1.0
        ):
            new_nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            if weight not in transposed:
                w = numpy_helper.to_array(inits[weight])
                name = f"{weight}_T"
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), name))
                transposed[weight] = name
            weight = transposed[weight]
        out = node.output[0]
        has_bias = len(node.input) > 2 and node.input[2] != ""
        mm_out = f"{out}_matmul" if has_bias else out
        matmul = helper.make_node("MatMul", [node.input[0], weight], [mm_out], name=f"{node.name}_MatMul")
        new_nodes.append(matmul)
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [out], name=f"{node.name}_Add"))
        count += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return count


def quantize_int8(src: str | Path, dst: str | Path, external_data: bool = False) -> dict[str, int]:
    """Write the int8 (dynamically quantised) version of the fp32 graph ``src`` to ``dst``.

    Returns counts: ``gemm_rewritten`` and ``matmul_int8`` (MatMulInteger nodes in the result).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "basic.onnx"
        # ORT's basic level folds the exporter's Identity/Transpose chains into plain weight initializers
        # (quantize_dynamic only sees a MatMul whose B is an initializer)
        optimize_graph(src, folded, level="basic", external_data=external_data)
        model = onnx.load(str(folded))
        rewritten = gemm_to_matmul(model)
        staged = Path(tmp) / "fp32.onnx"
        onnx.save_model(model, str(staged), save_as_external_data=external_data, location="fp32.onnx.data")
        del model
        quiet = logging.getLogger()  # quantize_dynamic logs a pre-processing hint on the root logger
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            quantize_dynamic(
                staged,
                Path(dst),
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                use_external_data_format=external_data,
                extra_options={"MatMulConstBOnly": True},
            )
        finally:
            quiet.setLevel(level)
    quantized = onnx.load(str(dst), load_external_data=False)
    n_int8 = sum(1 for n in quantized.graph.node if n.op_type == "MatMulInteger")
    return {"gemm_rewritten": rewritten, "matmul_int8": n_int8}


def quantize_graphs(directory: str | Path, graphs: dict[str, GraphSpec]) -> dict[str, GraphSpec]:
    """Replace every fp32 graph in ``directory`` by its int8 version (same file names and interface)."""
    import dataclasses

    root = Path(directory)
    out: dict[str, GraphSpec] = {}
    for name, spec in graphs.items():
        external = bool(spec.external_data)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            quantized = Path(tmp) / spec.file
            quantize_int8(root / spec.file, quantized, external_data=external)
            for f in (spec.file, *spec.external_data):
                (root / f).unlink()
            data = Path(tmp) / f"{spec.file}.data"
            if external and data.is_file():
                data.rename(root / f"{spec.file}.data")
            quantized.rename(root / spec.file)
        has_data = external and (root / f"{spec.file}.data").is_file()
        out[name] = dataclasses.replace(spec, external_data=(f"{spec.file}.data",) if has_data else ())
    return out


def quantize_export(src_dir: str | Path, out_dir: str | Path, optimize: str = "ort") -> Manifest:
    """An int8 export directory from an fp32 one (no torch, no re-tracing): graphs quantised, optimised
    graphs saved (``optimize`` as in ``export_onnx``), manifest rewritten with precision int8 and new hashes.
    """
    import dataclasses
    import datetime
    import shutil

    from apt_policy.runtime.manifest import hash_files, load_manifest

    src, out = Path(src_dir), Path(out_dir)
    manifest = load_manifest(src)
    if manifest.precision != "fp32":
        raise ValueError(f"{src} is a {manifest.precision} export; int8 is derived from fp32")
    out.mkdir(parents=True, exist_ok=False)
    graphs = {}
    for name, spec in manifest.graphs.items():
        external = bool(spec.external_data)
        quantize_int8(src / spec.file, out / spec.file, external_data=external)
        has_data = external and (out / f"{spec.file}.data").is_file()
        data = (f"{spec.file}.data",) if has_data else ()
        graphs[name] = dataclasses.replace(spec, external_data=data, optimized=None)
    if optimize != "none":
        from .optimize import optimize_graphs

        graphs = optimize_graphs(out, graphs, fusions=optimize == "transformer")
    if manifest.tokenizer:
        shutil.copyfile(src / manifest.tokenizer, out / manifest.tokenizer)
    names = [f for g in graphs.values() for f in g.files]
    names += [manifest.tokenizer] if manifest.tokenizer else []
    exporter = dict(manifest.exporter, quantized_from=str(src.resolve()))
    exporter["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result = dataclasses.replace(
        manifest, precision="int8", graphs=graphs, files=hash_files(out, names), exporter=exporter
    )
    result.write(out)
    return result
