"""Loading, saving and running the built-in network (weights as safetensors, never pickle)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...errors import ConfigError
from ..models import pick_device
from .net import NetSpec, UNet, fuse_batchnorm
from .postprocess import maps_to_labels
from .weights import FORMAT, SHIPPED, PostParams, weights_path


@dataclass
class ModelMeta:
    name: str
    spec: NetSpec
    mpp: float = 0.5
    post: PostParams = field(default_factory=PostParams)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "name": self.name, "spec": self.spec.to_dict(), "mpp": self.mpp,
                           "post": self.post.__dict__, **self.extra}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMeta":
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise ValueError(f"not a slidecell nucleus model (format {d.get('format')!r})")
        extra = {k: v for k, v in d.items() if k not in ("format", "name", "spec", "mpp", "post")}
        return cls(d["name"], NetSpec.from_dict(d["spec"]), float(d["mpp"]), PostParams(**d["post"]), extra)


def save_weights(net: UNet, meta: ModelMeta, path: Path, half: bool = False) -> None:
    from safetensors.torch import save_file

    from ...io.atomic import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    with atomic_path(Path(path)) as tmp:
        save_file(state, str(tmp), metadata={"slidecell": meta.to_json()})


def load_weights(name_or_path: str | Path) -> tuple[UNet, ModelMeta]:
    from safetensors import safe_open

    path = weights_path(name_or_path)
    if not path.is_file():
        known = ", ".join(SHIPPED)
        raise ConfigError(f"model {str(name_or_path)!r}: no weights file at {path} (shipped models: {known})")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = ModelMeta.from_json((fh.metadata() or {}).get("slidecell", "{}"))
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:  # safetensors raises several types for damaged files
        raise ConfigError(f"model {path}: cannot read weights: {err}") from None
    net = UNet(meta.spec)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"model {path}: weights do not fit the network: {err}") from None
    return net.eval(), meta


class Predictor:
    """Runs a network on batches of H×W×3 inputs and turns its maps into labels."""

    def __init__(self, net: UNet, meta: ModelMeta, device: str = "auto", precision: str = "auto",
                 fuse: bool = True, runtime: str = "torch"):
        self.meta = meta
        self.device = pick_device(device)
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.precision = precision
        net = fuse_batchnorm(net) if fuse else net.eval()
        self.session = None
        if runtime == "onnxruntime":
            if self.device.type != "cpu" or precision != "fp32":
                raise ConfigError(f"runtime onnxruntime runs the network on the CPU in fp32 (device {self.device.type}, "
                                  f"precision {precision}); use runtime: torch")
            self.session = onnx_session(net, meta.spec)
        elif runtime != "torch":
            raise ConfigError(f"unknown runtime {runtime!r} (torch, onnxruntime)")
        self.runtime = runtime
        self.channels_last = self.device.type == "cpu" or precision != "fp32"
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net

    @classmethod
    def load(cls, name_or_path, device="auto", precision="auto", runtime="torch") -> "Predictor":
        net, meta = load_weights(name_or_path)
        return cls(net, meta, device, precision, runtime=runtime)

    def pad(self, batch: np.ndarray) -> np.ndarray:
        """An N×H×W×C batch padded at its bottom and right to the network's period (mirrored;
        edge-repeated when the image is smaller than the padding), so that the pooling grid is
        anchored at the window's start."""
        h, w = batch.shape[1:3]
        m = self.meta.spec.multiple
        ph, pw = (-h) % m, (-w) % m
        if not (ph or pw):
            return batch
        return np.pad(batch, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect" if (ph < h and pw < w) else "edge")

    def maps(self, batch: np.ndarray) -> np.ndarray:
        """N×H×W×3 float32 → N×3×H×W float32 probabilities (foreground, boundary, distance)."""
        h, w = batch.shape[1:3]
        x = np.ascontiguousarray(self.pad(batch).transpose(0, 3, 1, 2), dtype=np.float32)
        if self.session is not None:
            y = self.session.run(None, {"x": x})[0][:, :, :h, :w]
            return (1.0 / (1.0 + np.exp(-y, dtype=np.float32))).astype(np.float32, copy=False)
        x = torch.from_numpy(x).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode():
            if dtype is not None:
                with torch.autocast(self.device.type, dtype=dtype):
                    y = self.net(x)
            else:
                y = self.net(x)
            y = torch.sigmoid(y.float())[:, :, :h, :w]
        return y.cpu().numpy()

    def labels(self, batch: np.ndarray, post: PostParams | None = None) -> list[np.ndarray]:
        post = post or self.meta.post
        out = []
        for p in self.maps(batch):
            out.append(maps_to_labels(p[0], p[1], p[2], **post.__dict__))
        return out


def onnx_session(net: torch.nn.Module, spec: NetSpec):
    """An ONNX Runtime CPU session of ``net`` (exported in memory, any batch and size), using as
    many threads as torch does."""
    import importlib

    try:
        importlib.import_module("onnx")  # torch's exporter writes the graph with it
        import onnxruntime as ort
    except ImportError as err:
        raise ConfigError(f'runtime onnxruntime needs the onnxruntime and onnx packages ({err.name} is missing): '
                          'pip install "slidecell[onnx]"') from None
    import io
    import warnings

    buf = io.BytesIO()
    dims = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(net.eval(), (torch.zeros(1, spec.in_channels, spec.multiple, spec.multiple),), buf,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": dims, "y": dims},
                          opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
