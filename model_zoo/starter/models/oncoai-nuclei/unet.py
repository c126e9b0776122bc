"""The small 2D U-Net behind the OncoAI nucleus starter model.

This file is also the ``pytorch_state_dict`` architecture of the exported
bioimage.io package, which copies it verbatim.  It must therefore import nothing
but ``torch``.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Sequential):
    """Two 3×3 convolutions, each followed by batch norm and ReLU.

    Parameters
    ----------
    in_channels : int
        Channels coming in.
    out_channels : int
        Channels going out.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class NucleiUNet(nn.Module):
    """A fully convolutional 2D U-Net with three poolings.

    The channel count doubles at each of the four resolution levels: with the
    default ``base_channels=8`` they are 8, 16, 32 and 64 (about 120k
    parameters).  The network returns logits; apply a sigmoid for
    probabilities.

    Parameters
    ----------
    in_channels : int
        Input channels.
    out_channels : int
        Output channels (logits).
    base_channels : int
        Channels at full resolution.

    Notes
    -----
    Height and width of the input must be multiples of 8.  The receptive field
    is 93 pixels wide, so outputs within about 24 pixels of a border that was
    zero-padded differ from those computed with real context.
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 8
    ) -> None:
        super().__init__()
        c1, c2, c3, c4 = (base_channels * 2**i for i in range(4))
        self.pool = nn.MaxPool2d(2)
        self.enc1 = ConvBlock(in_channels, c1)
        self.enc2 = ConvBlock(c1, c2)
        self.enc3 = ConvBlock(c2, c3)
        self.bottom = ConvBlock(c3, c4)
        self.up3 = nn.ConvTranspose2d(c4, c3, 2, stride=2)
        self.dec3 = ConvBlock(2 * c3, c3)
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.dec2 = ConvBlock(2 * c2, c2)
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = ConvBlock(2 * c1, c1)
        self.head = nn.Conv2d(c1, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits for ``x``.

        Parameters
        ----------
        x : torch.Tensor, (B, C, Y, X)
            Normalised input, Y and X multiples of 8.

        Returns
        -------
        torch.Tensor, (B, out_channels, Y, X)
            Logits.
        """
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        b = self.bottom(self.pool(e3))
        d3 = self.dec3(torch.cat([self.up3(b), e3], dim=1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)
