"""`export`: Hugging Face checkpoint -> SBD model folder (see docs/model-format.md).

The folder is written to a temporary sibling and renamed at the end, so a failure leaves nothing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from . import FORMAT_VERSION, KV_HEAD_MAJOR_SHARED, KV_SEQUENCE_MAJOR_PACKED, arch
from .hf import CheckpointError, find_mask_token, has_tokenizer, is_checkpoint, load_model, load_tokenizer

IO = {
    "input_ids": "input_ids",
    "position_ids": "position_ids",
    "attention_mask": "attention_mask",
    "logits_index": "logits_index",
    "past_key": "past_key_values.%d.key",
    "past_value": "past_key_values.%d.value",
    "logits": "logits",
    "present_key": "present.%d.key",
    "present_value": "present.%d.value",
}


class ExportError(CheckpointError):
    """The checkpoint cannot be exported as asked."""


class _Graph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.consts = arch.OnnxConsts(model, model.config.max_position_embeddings)

    def forward(self, input_ids, position_ids, attention_mask, logits_index, past):  # noqa: ANN001, ANN202
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, presents = arch.forward_onnx(
            self.model, self.consts, input_ids, position_ids, attention_mask, pairs, logits_index
        )
        return (logits, *[t for kv in presents for t in kv])


def fuse_skip_norms(graph: onnx.GraphProto) -> int:
    """Rewrite each residual ``Add`` feeding an ``RMSNormalization`` as one ONNX Runtime
    ``SkipSimplifiedLayerNormalization`` (which also outputs the sum); returns how many.

    ONNX Runtime fuses Add + its own SimplifiedLayerNormalization but not the standard opset-23
    RMSNormalization, so the exporter does it: 2 nodes per layer fewer, one pass over the
    activations instead of two.
    """
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name for t in graph.initializer}
    fused: dict[int, onnx.NodeProto] = {}  # id(Add) -> replacement
    drop: set[int] = set()
    for norm in graph.node:
        if norm.op_type != "RMSNormalization" or norm.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in norm.attribute}
        add = producer.get(norm.input[0])
        if (
            add is None
            or add.op_type != "Add"
            or id(add) in fused
            or attrs.get("axis", -1) != -1
            or attrs.get("stash_type", 1) != 1
            or any(i in inits or producer.get(i) is None for i in add.input)
        ):
            continue
        fused[id(add)] = onnx.helper.make_node(
            "SkipSimplifiedLayerNormalization",
            [add.input[0], add.input[1], norm.input[1]],
            [norm.output[0], "", "", add.output[0]],
            name=f"{norm.name or norm.output[0]}_skip",
            domain="com.microsoft",
            epsilon=attrs.get("epsilon", 1e-5),
        )
        drop.add(id(norm))
    nodes = [fused.get(id(n), n) for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(fused)


def _consumers(g: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Per tensor name, the nodes that read it."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def fuse_sibling_matmuls(model: onnx.ModelProto) -> int:
    """Merge the ``MatMul`` nodes that read the same activation with 2-D initializer weights into
    one ``MatMul`` over the weights side by side, followed by a ``Split`` that yields the original
    outputs; returns how many MatMuls were removed.

    In a Llama layer that is Q|K with V (one input norm) and gate with up (the other): 2 of 6
    matrix products per layer fewer. Each product is a kernel launch and, at int4 accuracy level
    4, a quantization of its input activations; a merged product does both once, and the
    quantized result is the same (MatMulNBits quantizes each output column on its own). Split
    copies only the product's output, one row of activations per token.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    readers = _consumers(g)
    groups: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        if n.op_type != "MatMul" or n.domain not in ("", "ai.onnx") or len(n.input) != 2:
            continue
        w = inits.get(n.input[1])
        if w is None or len(w.dims) != 2 or len(readers[n.input[1]]) != 1:
            continue
        groups.setdefault(n.input[0], []).append(n)
    first: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    removed = 0
    for x, nodes in groups.items():
        if len(nodes) < 2:
            continue
        ws = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        if len({w.shape[0] for w in ws}) != 1 or len({w.dtype for w in ws}) != 1:
            continue
        name = "fused." + "+".join(n.input[1] for n in nodes)
        g.initializer.append(numpy_helper.from_array(np.concatenate(ws, axis=1), name))
        for n in nodes:
            g.initializer.remove(inits[n.input[1]])
        sizes = f"{name}.sizes"
        g.initializer.append(numpy_helper.from_array(np.array([w.shape[1] for w in ws], np.int64), sizes))
        out = f"{name}.out"
        first[id(nodes[0])] = [
            helper.make_node("MatMul", [x, name], [out], name=f"{nodes[0].name}_fused"),
            helper.make_node(
                "Split", [out, sizes], [n.output[0] for n in nodes], axis=-1, name=f"{nodes[0].name}_split"
            ),
        ]
        drop |= {id(n) for n in nodes[1:]}
        removed += len(nodes) - 1
    new = []
    for n in g.node:
        if id(n) in drop:
            continue
        new.extend(first.get(id(n), [n]))
    del g.node[:]
    g.node.extend(new)
    return removed


def _quantization(quantize: str, level: int | None, block: int | None, method: str | None) -> Quantization:
    """What ``--quantize`` and its options ask for (``Quantization``'s defaults where not given),
    refused where out of range or where an option does not apply to ``quantize`` (checked before
    any work: a mistyped command fails at once)."""
    if quantize not in ("none", "int8", "int4"):
        raise ExportError(f"--quantize {quantize}: choose none, int8 or int4")
    if method is not None and quantize != "int8":
        raise ExportError(f"--int8-method applies to --quantize int8 only (this export is --quantize {quantize})")
    given = (("int4_accuracy_level", level), ("int4_block_size", block), ("int8_method", method))
    q = Quantization(quantize, **{k: v for k, v in given if v is not None})
    if q.int8_method not in ("block", "dynamic"):
        raise ExportError(f"--int8-method {q.int8_method}: choose block or dynamic")
    for flag, value in (("--int4-accuracy-level", level), ("--int4-block-size", block)):
        if value is not None and q.nbits is None:
            what = "--int8-method dynamic" if quantize == "int8" else "--quantize none"
            raise ExportError(
                f"{flag} applies to MatMulNBits weights (--quantize int4, or int8 with --int8-method block), "
                f"not to {what}"
            )
    if q.int4_accuracy_level not in range(5):
        raise ExportError(f"--int4-accuracy-level {q.int4_accuracy_level}: choose 0, 1, 2, 3 or 4")
    if q.int4_block_size < 16 or q.int4_block_size & (q.int4_block_size - 1):
        raise ExportError(f"--int4-block-size {q.int4_block_size}: must be a power of two >= 16 (e.g. 32)")
    return q


def export_folder(
    checkpoint: Path,
    out: Path,
    *,
    quantize: str = "none",
    block_sizes: list[int] | None = None,
    gammas: list[float] | None = None,
    add_mask_token: bool = False,
    default_block_size: int | None = None,
    int4_accuracy_level: int | None = None,
    int4_block_size: int | None = None,
    merge_products: bool = True,
    int8_method: str | None = None,
    fused_attention: bool = False,
) -> Path:
    """Export ``checkpoint`` to the model folder ``out``.

    ``int4_accuracy_level`` (``--quantize int4``): the compute type of MatMulNBits on the CPU,
    0 (the weights' float type), 1 fp32, 2 fp16, 3 bf16 or 4 (int8 activations: the fastest on
    x86-64 and Arm CPUs; ONNX Runtime falls back where a kernel lacks it). ``int4_block_size``: weights
    per quantization scale, a power of two >= 16. Both are recorded in the manifest.
    ``merge_products``: merge the matrix products that share an input (:func:`fuse_sibling_matmuls`;
    never for per-tensor int8); off gives the graph before the merge, to time against it.
    ``int8_method`` (``--quantize int8``): ``block``, 8-bit MatMulNBits with the int4 path's block
    size and accuracy level (one scale per 32 weights; at level 4 the activations are quantized
    per block too, so an activation outlier costs only its own block), or ``dynamic``,
    ``quantize_dynamic``'s per-tensor weights and activations (the project's int8 before
    2026-12-07; on SmolLM2-135M `verify` measured KL 0.42 nats and 66% top-1 on its own text).
    ``fused_attention``: each layer's attention as ONNX Runtime's ``GroupQueryAttention``, the cache
    written in place (kv_layout ``head-major-shared``; :mod:`.fused_attention`); needs the merged
    products, so not with ``merge_products`` off or per-tensor int8.
    Left as ``None``, each takes its default (level 4, blocks of 32, ``block``); given where it does
    not apply (``int8_method`` without int8, a MatMulNBits option without MatMulNBits), it is an
    error rather than silently ignored."""
    q = _quantization(quantize, int4_accuracy_level, int4_block_size, int8_method)
    if fused_attention and not (merge_products and (q.kind == "none" or q.nbits is not None)):
        raise ExportError(
            "--fused-attention reads Q, K and V from one merged product: drop --no-merge-products "
            "(and --int8-method dynamic, whose per-tensor int8 is left unmerged)"
        )
    out = Path(out)
    if out.exists():
        raise ExportError(f"output folder {out} already exists; remove it or choose another --out")
    checkpoint = Path(checkpoint)
    if not is_checkpoint(checkpoint):
        raise ExportError(
            f"{checkpoint} is not a Hugging Face checkpoint (no config.json), a .gguf file nor a LoRA adapter folder"
        )
    if not has_tokenizer(checkpoint):
        raise ExportError(
            f"{checkpoint} has no tokenizer (tokenizer.json); copy the base model's tokenizer files there"
        )
    model = load_model(checkpoint)
    name = arch.architecture_of(model)
    tok = load_tokenizer(checkpoint)
    if tok.backend_tokenizer is None:
        raise ExportError(f"{checkpoint}: the tokenizer has no tokenizer.json form; the runtime needs one")
    mask_id, mask_source = find_mask_token(tok, model, add_mask_token)
    bs = block_sizes or [2, 16]
    gm = gammas or [0.1, 0.35]
    if default_block_size is not None and not 1 <= default_block_size <= bs[-1]:
        raise ExportError(f"--default-block-size {default_block_size}: must be in [1, {bs[-1]}] (the trained range)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        _write(
            model,
            tok,
            checkpoint,
            tmp,
            name,
            mask_id,
            mask_source,
            q,
            bs,
            gm,
            default_block_size,
            merge_products,
            fused_attention,
        )
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _export_graph(model: nn.Module, path: Path, *, fuse_matmuls: bool = True, fused_attention: bool = False) -> str:
    """Trace ``model`` to ``path``; returns the name of its external weights file.

    ``fuse_matmuls``: merge the matrix products that share an input (:func:`fuse_sibling_matmuls`);
    off for per-tensor int8, whose one scale would then span two weight matrices of different ranges.
    ``fused_attention``: then each layer's attention as one ``GroupQueryAttention``
    (:func:`.fused_attention.fuse_attention`; needs the merged products)."""
    layers, heads, kv_heads, head_dim = arch.dims(model.config)
    b, s, p = 2, 5, 3  # never 0 or 1: the dynamo exporter would specialise them
    ids = torch.randint(0, model.config.vocab_size, (b, s))
    pos = torch.arange(p, p + s).repeat(b, 1)
    mask = torch.zeros(b, 1, s, p + s)
    keep = torch.tensor([2, 3, 4])  # 3 of the 5 positions: the rows the runtime reads
    past = [torch.randn(b, p, kv_heads * head_dim) for _ in range(2 * layers)]
    auto = torch.export.Dim.AUTO
    dyn = (
        {0: auto, 1: auto},
        {0: auto, 1: auto},
        {0: auto, 2: auto, 3: auto},
        {0: auto},
        [{0: auto, 1: auto} for _ in past],
    )
    names_in = ["input_ids", "position_ids", "attention_mask", "logits_index"]
    names_out = ["logits"]
    for i in range(layers):
        names_in += [IO["past_key"] % i, IO["past_value"] % i]
        names_out += [IO["present_key"] % i, IO["present_value"] % i]
    with torch.no_grad():
        prog = torch.onnx.export(
            _Graph(model).eval(),
            (ids, pos, mask, keep, past),
            dynamo=True,
            opset_version=23,
            input_names=names_in,
            output_names=names_out,
            dynamic_shapes=dyn,
            verbose=False,
        )
    prog.save(str(path), external_data=True)
    proto = onnx.load(str(path))
    if fuse_skip_norms(proto.graph) and not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    if fuse_matmuls:
        fuse_sibling_matmuls(proto)
    if fused_attention:
        from .fused_attention import FuseError, fuse_attention

        try:
            fuse_attention(proto, num_heads=heads, kv_heads=kv_heads, head_dim=head_dim)
        except FuseError as e:
            raise ExportError(f"--fused-attention: {e}") from e
    return save_graph(proto, path)


def save_graph(proto: onnx.ModelProto, path: Path) -> str:
    """Write the graph to ``path`` and its weights (every tensor of 1 KiB or more) to one external
    file beside it; returns that file's name (the manifest's ``files.weights``).

    ONNX Runtime maps external weights from the file instead of parsing them out of the protobuf
    into the heap: on SmolLM2-135M fp32 (``bench/load_memory.py``), 575 MiB resident after loading
    in every run against 693-904 for a single file, and a peak of 683 MiB against 801-1,012 (the
    single-file load's transient copy, released to the OS or not by chance). Forward times are
    unchanged.
    """
    data = path.name + ".data"
    for f in path.parent.glob(path.name + "*"):
        f.unlink()
    onnx.save(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=1024,
    )
    (path.parent / data).chmod(0o644)  # onnx creates it owner-only; the folder is meant to be shipped
    return data


@dataclass(frozen=True)
class Quantization:
    """What ``--quantize`` asked for, with the int4 options."""

    kind: str
    int4_accuracy_level: int = 4
    int4_block_size: int = 32
    # set by a MatMulNBits export when a tied embedding is read from the head's quantized weights
    embedding: str | None = None
    int8_method: str = "block"  # block (MatMulNBits, 8 bits) or dynamic (quantize_dynamic)

    @property
    def nbits(self) -> int | None:
        """Bits per weight where the export goes through MatMulNBits, else None."""
        if self.kind == "int4":
            return 4
        if self.kind == "int8" and self.int8_method == "block":
            return 8
        return None

    def options(self) -> dict | None:
        """The manifest's ``quantization_options``: how the weights were quantized."""
        if self.kind == "int8" and self.int8_method == "dynamic":
            return {"method": "quantize_dynamic", "weight_type": "int8", "op_types": ["MatMul"]}
        if self.nbits:
            return {
                "method": "MatMulNBits",
                "bits": self.nbits,
                "block_size": self.int4_block_size,
                "symmetric": True,
                "accuracy_level": self.int4_accuracy_level,
                # a head tied to the embedding is quantized too (its transposed copy), as the rest
                "head": self.kind,
                **({"embedding": self.embedding} if self.embedding else {}),
            }
        return None


def _write(model, tok, checkpoint, tmp, name, mask_id, mask_source, quant, bs, gm, default_k, merge, fused) -> None:  # noqa: ANN001, PLR0913
    cfg = model.config
    layers, heads, kv_heads, head_dim = arch.dims(cfg)
    graph = tmp / "model.onnx"
    quantize = quant.kind
    if quantize == "none":
        weights = _export_graph(model, graph, fuse_matmuls=merge, fused_attention=fused)
    else:
        raw = tmp / "fp32.onnx"
        _export_graph(model, raw, fuse_matmuls=merge and quant.nbits is not None, fused_attention=fused)
        if _quantize(raw, graph, quant):
            quant = dataclasses.replace(quant, embedding=quant.kind)
        for f in tmp.glob("fp32.onnx*"):
            f.unlink()
        weights = save_graph(onnx.load(str(graph)), graph)
    tok.save_pretrained(tmp)
    # The runtime reads the chat template from tokenizer_config.json.
    tc_path = tmp / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}
    if tok.chat_template:
        tc["chat_template"] = tok.chat_template
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False))
    for f in ("chat_template.jinja", "special_tokens_map.json"):
        (tmp / f).unlink(missing_ok=True)
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else tok.eos_token_id
    eos_ids = sorted(set(eos if isinstance(eos, list) else [eos] if eos is not None else []))
    if tok.eos_token_id is not None and tok.eos_token_id not in eos_ids:
        eos_ids.append(tok.eos_token_id)
    prov_path = (checkpoint.parent if checkpoint.suffix == ".gguf" else checkpoint) / "setblock_train.json"
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {"base_model": str(checkpoint), "runs": []}
    manifest = {
        "format_version": FORMAT_VERSION,
        "architecture": name,
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_size": cfg.hidden_size,
        "vocab_size": model.get_input_embeddings().weight.shape[0],
        "mask_token_id": mask_id,
        "mask_token_source": mask_source,
        "bos_token_id": tok.bos_token_id,
        "eos_token_ids": eos_ids,
        "pad_token_id": tok.pad_token_id,
        "max_positions": cfg.max_position_embeddings,
        "block_sizes": {"min": bs[0], "max": bs[-1]},
        "gamma": {"low": gm[0], "high": gm[1]},
        "default_block_size": default_k,
        "dtype": "float32",
        "quantization": quantize,
        **({"quantization_options": quant.options()} if quant.options() else {}),
        "kv_layout": KV_HEAD_MAJOR_SHARED if fused else KV_SEQUENCE_MAJOR_PACKED,
        "io": IO,
        "files": {"model": graph.name, "weights": weights, "tokenizer": "tokenizer.json"},
        "provenance": {
            **prov,
            "source_checkpoint": str(checkpoint),
            "exported": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    (tmp / "setblock.json").write_text(json.dumps(manifest, indent=2))


def _quantize(src: Path, dst: Path, quant: Quantization) -> bool:
    """Write the quantized graph (``quant`` as ``_quantization`` checked it: int8 or int4); returns
    whether the embedding was quantized too (MatMulNBits, tied)."""
    if quant.nbits is None:  # int8 by quantize_dynamic, the one method without MatMulNBits
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            use_external_data_format=True,
        )
        return False
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    _materialize_transposed_weights(model)
    q = MatMulNBitsQuantizer(
        model,
        bits=quant.nbits,
        block_size=quant.int4_block_size,
        is_symmetric=True,
        accuracy_level=quant.int4_accuracy_level,
    )
    q.process()
    embedding = _gather_quantized_embedding(q.model.model, quant.int4_block_size, quant.nbits)
    q.model.save_model_to_file(str(dst), use_external_data_format=True)
    return embedding


def _gather_quantized_embedding(model: onnx.ModelProto, block_size: int, bits: int) -> bool:
    """Read the embedding of a tied model from the head's MatMulNBits weights: the float ``Gather``
    of the embedding becomes ONNX Runtime's ``GatherBlockQuantized`` over the head's weights and
    scales (``bits`` 4 or 8, blocks along the hidden axis), and the float embedding is dropped.
    Returns whether it was done (False for an untied head).

    The head of a tied model is the transposed embedding (``_materialize_transposed_weights``),
    quantized per output column in blocks along the hidden size: its packed weights are the
    embedding's rows, quantized. onnxruntime-genai stores a tied SmolLM2 the same way. On
    SmolLM2-135M this drops 113 MB of float32."""
    from onnx import helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type != "Gather" or len(n.input) != 2 or n.input[0] not in inits:
            continue
        emb = inits[n.input[0]]
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 0)
        packed = inits.get(f"{emb.name}.transposed_Q{bits}")
        scales = inits.get(f"{emb.name}.transposed_scales")
        if axis != 0 or packed is None or scales is None or len(emb.dims) != 2:
            continue
        vocab, hidden = emb.dims
        per_byte = 8 // bits
        if list(packed.dims) != [vocab, hidden // block_size, block_size // per_byte]:
            continue
        rows, rows_scales = f"{emb.name}.rows_int{bits}", f"{emb.name}.rows_scales"
        shape_rows, shape_scales = f"{rows}.shape", f"{rows_scales}.shape"
        g.initializer.extend(
            [
                onnx.numpy_helper.from_array(np.array([vocab, hidden // per_byte], np.int64), shape_rows),
                onnx.numpy_helper.from_array(np.array([vocab, hidden // block_size], np.int64), shape_scales),
            ]
        )
        i = list(g.node).index(n)
        g.node.remove(n)
        for j, node in enumerate(
            [
                helper.make_node("Reshape", [packed.name, shape_rows], [rows]),
                helper.make_node("Reshape", [scales.name, shape_scales], [rows_scales]),
                helper.make_node(
                    "GatherBlockQuantized",
                    [rows, n.input[1], rows_scales],
                    list(n.output),
                    name=f"{n.name or 'embedding'}_int{bits}",
                    domain="com.microsoft",
                    bits=bits,
                    block_size=block_size,
                    gather_axis=0,
                    quantize_axis=1,
                ),
            ]
        ):
            g.node.insert(i + j, node)
        if not any(emb.name in m.input for m in g.node):
            g.initializer.remove(emb)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        return True
    return False


def _materialize_transposed_weights(model: onnx.ModelProto) -> None:
    """Replace each ``Transpose`` of an initializer that only feeds ``MatMul`` weights with the
    transposed initializer itself (the original is dropped when nothing else reads it).

    A head tied to the embedding is exported as ``MatMul(x, Transpose(embedding))``. The quantizer
    only takes a MatMul whose weight is an initializer, so that head stayed float32: on
    SmolLM2-135M, 113 MB read per token beside about 60 MB of int4 layers, and ONNX Runtime's
    constant folding kept a second float32 copy of it in memory. The embedding's ``Gather`` keeps
    the original (one row per token)."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    users = _consumers(g)
    for n in list(g.node):
        if n.op_type != "Transpose" or n.input[0] not in inits:
            continue
        out = n.output[0]
        feeds = users.get(out, [])
        if not feeds or any(u.op_type != "MatMul" or list(u.input).index(out) != 1 for u in feeds):
            continue
        w = numpy_helper.to_array(inits[n.input[0]])
        perm = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "perm"), None)
        t = np.ascontiguousarray(w.transpose(perm) if perm is not None else w.T)
        name = f"{n.input[0]}.transposed"
        g.initializer.append(numpy_helper.from_array(t, name))
        for u in feeds:
            u.input[1] = name
        g.node.remove(n)
        if users[n.input[0]] == [n]:  # read by nothing else (an untied head): not kept twice
            g.initializer.remove(inits[n.input[0]])
