"""A trained U-Net as an ONNX graph, for the tools biologists use (Fiji / deepImageJ, ilastik,
QuPath, napari through the BioImage Model Zoo).

The graph is built with ``onnx.helper`` from the model's own structure (:class:`unet_jax.unet.UNet`):
3x3 convolutions (batch normalisation folded into them, inference statistics), ReLU, 2x2
max-pooling, 2x2 up-convolutions, the centre crop of the skip features, concatenation, the
final 1x1 convolution and a softmax over the classes. It takes ``input`` [B, C, H, W] float32
(normalised as in training) and gives ``output`` [B, K, H', W'], the class probabilities; H and
W are free, within the sizes the network takes (:func:`unet_jax.unet.is_valid_input_size`).
Layers the builder does not cover (group normalisation, bilinear up-sampling) are refused by
name. A dedicated builder rather than a JAX-to-ONNX converter: jax2onnx pins an orbax older
than the project's, and the U-Net needs only these few operators.
"""
from __future__ import annotations

import numpy as np

from unet_jax import unet

OPSET = 17
BATCH_NORM_EPSILON = 1e-5  # flax.linen.BatchNorm's default, as layers.Norm uses it


def check_exportable(model: unet.UNet) -> None:
    """Raises ValueError naming the first layer the ONNX builder does not cover."""
    if model.norm not in ("none", "batch"):
        raise ValueError(f"ONNX export does not cover the layer {model.norm!r} normalisation "
                         f"(down_0/Norm_0); models with norm 'none' or 'batch' export")
    if model.upsample != "transpose":
        raise ValueError(f"ONNX export does not cover the layer {model.upsample!r} up-sampling "
                         f"(up_{model.depth - 1}); models with upsample 'transpose' export")


def unet_to_onnx(model: unet.UNet, variables: dict, name: str = "unet_jax"):
    """The ONNX model (``onnx.ModelProto``) of ``model`` with ``variables`` (params and, for batch
    normalisation, batch_stats) in inference mode; its output equals
    ``softmax(model.apply(variables, x))`` transposed to channels first."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    check_exportable(model)
    params, stats = variables["params"], variables.get("batch_stats", {})
    nodes, inits = [], []

    def const(value, tag: str) -> str:
        name_ = f"{tag}_{len(inits)}"
        inits.append(numpy_helper.from_array(np.asarray(value), name_))
        return name_

    def node(op: str, inputs: list[str], **attrs) -> str:
        out = f"{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    pad = 1 if model.padding == "same" else 0

    def conv(x: str, p: dict, kernel_pad: int, bn: tuple | None = None) -> str:
        k = np.asarray(p["kernel"], np.float64)  # [kh, kw, C_in, C_out]
        b = np.asarray(p["bias"], np.float64) if "bias" in p else np.zeros(k.shape[-1])
        if bn is not None:  # y = (conv - mean) / sqrt(var + eps) * scale + shift
            scale, shift, mean, var = (np.asarray(v, np.float64) for v in bn)
            g = scale / np.sqrt(var + BATCH_NORM_EPSILON)
            k, b = k * g, (b - mean) * g + shift
        w = np.transpose(k, (3, 2, 0, 1)).astype(np.float32)  # [C_out, C_in, kh, kw]
        return node("Conv", [x, const(w, "w"), const(b.astype(np.float32), "b")],
                    pads=[kernel_pad] * 4, kernel_shape=list(w.shape[2:]))

    def block(x: str, name_: str) -> str:
        for i in range(2):
            p = params[name_][f"Conv_{i}"]
            bn = None
            if model.norm == "batch":
                q, s = params[name_][f"Norm_{i}"]["BatchNorm_0"], stats[name_][f"Norm_{i}"]["BatchNorm_0"]
                bn = (q["scale"], q["bias"], s["mean"], s["var"])
            x = node("Relu", [conv(x, p, pad, bn)])
        return x

    # sizes along one axis at the smallest valid input: the crops are the same for every size
    size = unet.input_size_for_output(1, model.depth, model.padding)
    shrink = 0 if model.padding == "same" else 4
    skip_sizes, s = [], size
    x = "input"
    skips = []
    for level in range(model.depth):
        x = block(x, f"down_{level}")
        s -= shrink
        skips.append(x)
        skip_sizes.append(s)
        x = node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        s //= 2
    x = block(x, "bottom")
    s -= shrink
    for level in reversed(range(model.depth)):
        p = params[f"up_{level}"]["ConvTranspose_0"]
        k = np.asarray(p["kernel"], np.float32)  # [2, 2, C_in, C_out]; y[2h+a, 2w+b] = x K[1-a, 1-b]
        w = np.transpose(k[::-1, ::-1], (2, 3, 0, 1)).copy()  # [C_in, C_out, a, b]
        x = node("ConvTranspose", [x, const(w, "w"), const(np.asarray(p["bias"], np.float32), "b")],
                 kernel_shape=[2, 2], strides=[2, 2])
        s *= 2
        d = skip_sizes[level] - s  # the skip's extra border, the same on both axes
        skip = skips[level]
        if d:
            lo, hi = d // 2, d - d // 2
            skip = node("Slice", [skip, const(np.array([lo, lo], np.int64), "starts"),
                                  const(np.array([-hi or np.iinfo(np.int64).max] * 2, np.int64), "ends"),
                                  const(np.array([2, 3], np.int64), "axes")])
        x = node("Concat", [skip, x], axis=1)
        x = block(x, f"up_block_{level}")
        s -= shrink
    x = conv(x, params["head"], 0)
    nodes.append(helper.make_node("Softmax", [x], ["output"], axis=1))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", model.in_channels, "y", "x"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                       ["batch", model.num_classes, "y_out", "x_out"])],
        inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="unet_jax")
    onnx_model.ir_version = 8  # readable by ONNX Runtime 1.14 and later
    onnx.checker.check_model(onnx_model)
    return onnx_model
