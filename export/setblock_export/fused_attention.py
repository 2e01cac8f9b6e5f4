"""`--fused-attention`: each layer's attention as ONNX Runtime's ``GroupQueryAttention``
(``com.microsoft``), the cache written in place (kv_layout ``head-major-shared``).

The exported graph computes a layer's attention in six nodes: the ``Split`` of the merged Q|K|V
product, one ``RotaryEmbedding`` for Q and K, the ``Split`` of Q from K, two ``Concat`` of the
past with this forward's K/V, and the ONNX ``Attention`` op. ``GroupQueryAttention`` does all of
it in one node: it reads the packed Q|K|V product, rotates Q and K by ``position_ids`` from the
same cos/sin tables, writes this forward's K/V into the cache buffer at positions
``past..past+n`` (past and present bound to the same buffer: no copy of the past) and attends.
With ``causal=0`` and the block mask as its ``attention_bias`` it runs SBD blocks exactly as the
``Attention`` op does (a block's slots see each other; clean rows do not see the slots).

The cache is then head-major, ``[batch, kv_heads, capacity, head_dim]`` per layer, one buffer for
past and present: the runtime binds its own preallocated cache as both. The op writes a block
slot's K/V past the committed positions too; the runtime never counts them (they are overwritten
by the next forward), which is the exactness the sequence-major layout had by copying only the
clean rows.

ONNX Runtime's contrib op, measured here on its CPU provider only (this form, causal=0 with a bias,
is untried on CUDA); an execution provider without it (CoreML, NNAPI, XNNPACK) hands those nodes
back to the CPU provider, so the default export stays the portable one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import KV_HEAD_MAJOR_SHARED, KV_SEQUENCE_MAJOR_PACKED


class FuseError(ValueError):
    """The graph does not have the form the rewrite expects."""


def fuse_attention(model: onnx.ModelProto, *, num_heads: int, kv_heads: int, head_dim: int) -> int:
    """Rewrite every layer's attention as one ``GroupQueryAttention`` (module docstring); returns
    the number of layers rewritten. Raises :class:`FuseError` naming what is missing where the
    graph is not the exporter's (Q|K|V not one product: ``--no-merge-products``, per-tensor int8;
    Q and K apart: Qwen3's per-head norms)."""
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    drop: set[int] = set()
    fused: dict[int, onnx.NodeProto] = {}
    layer = 0
    for n in g.node:
        if n.op_type != "Attention":
            continue
        try:
            cat_k, cat_v = prod[n.input[1]], prod[n.input[2]]
            past_k, k = cat_k.input
            past_v, v = cat_v.input
            split_qk = prod[k]
            rot = prod[split_qk.input[0]]
            split_qkv = prod[rot.input[0]]
        except (KeyError, ValueError) as e:
            msg = f"attention node {n.name!r}: its inputs are not the exporter's past Concat form ({e})"
            raise FuseError(msg) from e
        if (
            cat_k.op_type != "Concat"
            or cat_v.op_type != "Concat"
            or split_qk.op_type != "Split"
            or rot.op_type != "RotaryEmbedding"
            or split_qkv.op_type != "Split"
            or list(split_qkv.output) != [rot.input[0], v]
            or list(split_qk.output) != [n.input[0], k]
        ):
            raise FuseError(
                f"attention node {n.name!r}: Q, K and V do not come from one merged product rotated by one "
                "RotaryEmbedding (exported with --no-merge-products, per-tensor int8, or per-head Q/K norms); "
                "export without --fused-attention"
            )
        if any(readers.get(t, 0) != 1 for t in (rot.input[0], n.input[0])):
            raise FuseError(f"attention node {n.name!r}: Q or K is read elsewhere; the rewrite would drop it")
        rot_attrs = {a.name: helper.get_attribute_value(a) for a in rot.attribute}
        if rot_attrs.get("rotary_embedding_dim", 0) not in (0, head_dim):
            raise FuseError(
                f"attention node {n.name!r}: the rotary turns {rot_attrs['rotary_embedding_dim']} of {head_dim} "
                "dimensions per head; export without --fused-attention"
            )
        scale = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "scale"), None)
        attrs = {"num_heads": num_heads, "kv_num_heads": kv_heads, "do_rotary": 1, "causal": 0}
        attrs["rotary_interleaved"] = int(rot_attrs.get("interleaved", 0))
        if scale is not None:
            attrs["scale"] = scale
        fused[id(n)] = helper.make_node(
            "GroupQueryAttention",
            [
                split_qkv.input[0],
                "",
                "",
                past_k,
                past_v,
                "gqa.seqlens_k",
                "gqa.total_length",
                rot.input[1],
                rot.input[2],
                rot.input[3],
                n.input[3],
            ],
            [n.output[0], cat_k.input[1], cat_v.input[1]],
            domain="com.microsoft",
            name=f"gqa_{layer}",
            **attrs,
        )
        drop |= {id(x) for x in (cat_k, cat_v, split_qk, rot, split_qkv)}
        layer += 1
    if layer == 0:
        raise FuseError("the graph has no Attention node to fuse")
    mask = next(n.input[3] for n in g.node if id(n) in fused)
    # The op's lengths, from the mask's last dimension (past + this forward): the cache buffer's
    # own length is its capacity, not the number of committed positions.
    head = [
        helper.make_node("Shape", [mask], ["gqa.total64"], start=3, end=4, name="gqa_total_shape"),
        helper.make_node("Cast", ["gqa.total64"], ["gqa.total1"], to=TensorProto.INT32, name="gqa_total_cast"),
        helper.make_node("Sub", ["gqa.total1", "gqa.one"], ["gqa.seqlens_k"], name="gqa_seqlens_k"),
        helper.make_node("Squeeze", ["gqa.total1"], ["gqa.total_length"], name="gqa_total_length"),
    ]
    g.initializer.append(numpy_helper.from_array(np.array([1], np.int32), "gqa.one"))
    nodes = list(head)
    for n in g.node:
        if id(n) in fused:
            nodes.append(fused[id(n)])
        elif id(n) not in drop:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    kv_names = {x for n in fused.values() for x in (n.input[3], n.input[4], n.output[1], n.output[2])}
    for vi in list(g.input) + list(g.output):
        if vi.name in kv_names:
            batch = vi.type.tensor_type.shape.dim[0]
            shape = [batch.dim_param or batch.dim_value or "batch", kv_heads, "capacity", head_dim]
            vi.type.CopyFrom(helper.make_tensor_type_proto(TensorProto.FLOAT, shape))
    del g.value_info[:]
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return layer


def fuse_folder(src: Path, out: Path) -> int:
    """Write ``src`` (an exported folder, kv_layout ``sequence-major-packed``) to ``out`` with its
    attention fused (:func:`fuse_attention`; a float graph's products that share an input are merged
    first, as a current export does); returns the layers rewritten. ``out`` must not exist."""
    from .onnx_export import ExportError, fuse_sibling_matmuls, save_graph

    src, out = Path(src), Path(out)
    if out.exists():
        raise ExportError(f"output folder {out} already exists; remove it or choose another --out")
    manifest_path = src / "setblock.json"
    if not manifest_path.exists():
        raise ExportError(f"{src} has no setblock.json: not a model folder (export one first)")
    m = json.loads(manifest_path.read_text())
    if m.get("kv_layout") != KV_SEQUENCE_MAJOR_PACKED:
        raise ExportError(
            f"{src}: kv_layout {m.get('kv_layout')!r}; fuse-attention rewrites {KV_SEQUENCE_MAJOR_PACKED!r} folders "
            "(re-export the checkpoint with --fused-attention)"
        )
    proto = onnx.load(str(src / m["files"]["model"]))
    fuse_sibling_matmuls(proto)
    try:
        layers = fuse_attention(proto, num_heads=m["num_heads"], kv_heads=m["num_kv_heads"], head_dim=m["head_dim"])
    except FuseError as e:
        raise ExportError(f"{src}: {e}") from e
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        weights = m["files"].get("weights")
        for f in src.iterdir():
            if f.is_file() and f.name not in (m["files"]["model"], weights, "setblock.json", "golden.json"):
                shutil.copy2(f, tmp / f.name)
        m["files"]["weights"] = save_graph(proto, tmp / m["files"]["model"])
        m["kv_layout"] = KV_HEAD_MAJOR_SHARED
        (tmp / "setblock.json").write_text(json.dumps(m, indent=2))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return layers
