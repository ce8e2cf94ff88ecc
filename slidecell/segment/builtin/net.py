"""The built-in nucleus network: a compact U-Net with three output maps.

Outputs (logits, one channel each, at the input resolution):

``0`` foreground
    the pixel belongs to a nucleus
``1`` boundary
    the pixel is on a nucleus' outer ring (used to split touching nuclei, see ``postprocess``)
``2`` distance
    distance to the nucleus border, normalised to 1 at each nucleus' centre

The architecture is described by plain numbers (:class:`NetSpec`) stored beside the weights, so
a weights file says which network it belongs to and loading never unpickles anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

OUTPUTS = ("foreground", "boundary", "distance")


@dataclass(frozen=True)
class NetSpec:
    in_channels: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    out_channels: int = len(OUTPUTS)

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetSpec":
        return cls(int(d["in_channels"]), tuple(int(c) for c in d["channels"]), int(d["out_channels"]))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, spec: NetSpec = NetSpec()):
        super().__init__()
        self.spec = spec
        ch = spec.channels
        self.enc = nn.ModuleList()
        c = spec.in_channels
        for co in ch:
            self.enc.append(_block(c, co))
            c = co
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(ch) - 1, 0, -1):
            self.up.append(nn.ConvTranspose2d(ch[i], ch[i - 1], 2, stride=2))
            self.dec.append(_block(2 * ch[i - 1], ch[i - 1]))
        self.head = nn.Conv2d(ch[0], spec.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.enc):
            if i:
                x = nn.functional.max_pool2d(x, 2)
            x = enc(x)
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], 1))
        return self.head(x)


def fuse_batchnorm(model: UNet) -> nn.Module:
    """Inference copy with every BatchNorm folded into the convolution before it (same output,
    fewer passes over memory)."""
    import copy

    fused = copy.deepcopy(model).eval()
    for seq in list(fused.enc) + list(fused.dec):
        layers = list(seq)
        out = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, nn.Conv2d) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
                out.append(torch.nn.utils.fusion.fuse_conv_bn_eval(layer, layers[i + 1]))
                i += 2
            else:
                out.append(layer)
                i += 1
        seq._modules.clear()
        for k, layer in enumerate(out):
            seq.add_module(str(k), layer)
    return fused
