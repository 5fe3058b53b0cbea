"""The networks of the report's Figure 4, after Reed et al. (2016), at 64x64.

- `ResidualGenerator` (fig 4a): sound feature -> linear -> proj_dim (leaky ReLU), concatenated with noise z,
  transposed convolutions 4x4 -> 64x64 with a residual block at 4x4 and at 8x8, batch norm after each layer.
- `SimpleGenerator` (fig 4b): the same without the residual blocks. With `cond_dim=0` it is the
  unconditional WGAN generator pretrained on PPMI; the layer names are shared, so its weights load into the
  conditional one wherever the shapes agree (everything but the first transposed convolution).
- `ResNetGenerator` (not in the report): the SN-GAN / BigGAN generator, residual blocks that upsample by nearest
  neighbour and a 3x3 convolution (no transposed-convolution checkerboard), the sound entering every block
  through conditional batch norm.
- `RetrievalGenerator` (not in the report): a U-Net over a training frame looked up by sound (IC-GAN's instance
  conditioning), the sound in every block's batch norm; it can draw a change to that frame (`edit`) and look
  it up among the frames of the class a linear reader hears in the sound (`heard_class`).
- `InstanceGenerator`, `TwoStageGenerator` (not in the report): the two-stage method after Sound2Scene, an
  image encoder and an `EmbeddingDecoder` drawing from its embedding (stage one, no sound), then a
  `SoundToEmbedding` head in front of that decoder (stage two).
- `Critic` (fig 4c): strided convolutions 64x64 -> ndf*8 x 4x4, the condition projected to proj_dim and
  replicated over 4x4, concatenated, a 1x1 and a 4x4 convolution to one scalar (a logit for GAN-CLS).
- `ProjectionCritic` (not in the report): the projection discriminator of Miyato & Koyama (2018), the
  condition entering as an inner product with the pooled image features instead of by concatenation.

Images are (B, 3, 64, 64) in [-1, 1]; conditions are (B, cond_dim) standardised sound features.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from his.probe import fit_linear_probe

Norm = Literal["batch", "layer", "none"]
NORMS = ("batch", "layer", "none")
SLOPE = 0.2


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # normalises each sample over (C, H, W): no batch statistics, safe for the penalty
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ConditionProjection(nn.Module):
    """cond_dim -> proj_dim with leaky ReLU (the 'linear transformation' of §4.2)."""

    def __init__(self, cond_dim: int, proj_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cond_dim, proj_dim)
        self.act = nn.LeakyReLU(SLOPE)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(cond))


def _up(cin: int, cout: int, first: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d(cin, cout, 4, 1, 0, bias=False) if first else nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


class ResidualBlock(nn.Module):
    """Reed's bottleneck: 1x1 to c/4, 3x3, 3x3 back to c, batch norm after each; added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = max(channels // 4, 1)
        self.body = nn.Sequential(
            nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.LeakyReLU(SLOPE),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.LeakyReLU(SLOPE),
            nn.Conv2d(mid, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SimpleGenerator(nn.Module):
    """Fig 4b (and, with cond_dim=0, the unconditional PPMI generator)."""

    residual = False

    def __init__(self, cond_dim: int = 1024, z_dim: int = 100, ngf: int = 64, proj_dim: int = 128) -> None:
        super().__init__()
        self.cond_dim, self.z_dim = cond_dim, z_dim
        self.project = ConditionProjection(cond_dim, proj_dim) if cond_dim > 0 else None
        cin = z_dim + (proj_dim if cond_dim > 0 else 0)
        self.up1 = _up(cin, ngf * 8, first=True)  # 4x4
        self.res1 = ResidualBlock(ngf * 8) if self.residual else None
        self.up2 = _up(ngf * 8, ngf * 4)  # 8x8
        self.res2 = ResidualBlock(ngf * 4) if self.residual else None
        self.up3 = _up(ngf * 4, ngf * 2)  # 16x16
        self.up4 = _up(ngf * 2, ngf)  # 32x32
        self.to_rgb = nn.ConvTranspose2d(ngf, 3, 4, 2, 1)  # 64x64
        self.act = nn.LeakyReLU(SLOPE)
        init_weights(self)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = z if self.project is None else torch.cat([z, self.project(cond)], dim=1)
        x = self.up1(h[:, :, None, None])
        if self.res1 is not None:
            x = self.res1(x)
        x = self.up2(self.act(x))
        if self.res2 is not None:
            x = self.res2(x)
        x = self.up4(self.act(self.up3(self.act(x))))
        return torch.tanh(self.to_rgb(self.act(x)))


class ResidualGenerator(SimpleGenerator):
    """Fig 4a: SimpleGenerator with residual blocks after the 4x4 and 8x8 layers (Reed et al.)."""

    residual = True


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose scale and shift are linear in the condition embedding e: x_hat * (1 + W_g e) + W_b e.

    Conditional batch norm (de Vries et al. 2017, "Modulating early visual processing by language"), the way
    SN-GAN's and BigGAN's generators take the class (Miyato & Koyama 2018; Brock et al. 2019, whose shared
    embedding feeds every block). W_g and W_b start at zero, so an untrained block is plain batch norm, and with
    emb_dim=0 (the unconditional generator) it is plain batch norm with the same parameter names: its weights
    warm-start the conditional one, and only gain.* / shift.* start fresh.
    """

    def __init__(self, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.gain = nn.Linear(emb_dim, channels, bias=False) if emb_dim > 0 else None
        self.shift = nn.Linear(emb_dim, channels, bias=False) if emb_dim > 0 else None

    def zero_condition_layers(self) -> None:
        if self.gain is not None:
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        x = self.bn(x)
        if self.gain is None:
            return x
        return x * (1 + self.gain(emb)[:, :, None, None]) + self.shift(emb)[:, :, None, None]


class UpBlock(nn.Module):
    """BN-ReLU-up-conv3x3-BN-ReLU-conv3x3, plus up-conv1x1 of the input (SN-GAN's generator block), 2x larger."""

    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = ConditionalBatchNorm(cin, emb_dim), ConditionalBatchNorm(cout, emb_dim)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        up = lambda t: nn.functional.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        h = self.conv1(up(torch.relu(self.norm1(x, emb))))
        h = self.conv2(torch.relu(self.norm2(h, emb)))
        return h + self.skip(up(x))


DECODER_WIDTHS = (8, 4, 2, 1, 1)  # x ngf at 4, 8, 16, 32, 64 px


def _resnet_decoder(ngf: int, emb_dim: int) -> tuple[nn.ModuleList, nn.BatchNorm2d, nn.Conv2d]:
    """ResNetGenerator's way up, ngf*8 x 4x4 -> 64x64: four UpBlocks, then the output norm and RGB convolution."""
    widths = [ngf * w for w in DECODER_WIDTHS]
    blocks = nn.ModuleList(UpBlock(a, b, emb_dim) for a, b in zip(widths, widths[1:]))
    return blocks, nn.BatchNorm2d(ngf), nn.Conv2d(ngf, 3, 3, padding=1)


def _init_generator(module: nn.Module) -> None:
    """DCGAN initialisation, and every conditional norm starting as plain batch norm."""
    init_weights(module)
    for m in module.modules():
        if isinstance(m, ConditionalBatchNorm):
            m.zero_condition_layers()


class ResNetGenerator(nn.Module):
    """z and the projected sound -> linear -> ngf*8 x 4x4 -> four UpBlocks (8, 16, 32, 64) -> BN-ReLU-conv3x3-tanh.

    The sound's projection e (proj_dim, ConditionProjection) is concatenated with z at the input, as in the
    report's generators, and also modulates every block's batch norm (ConditionalBatchNorm), so what the
    sound says reaches each resolution directly instead of only through the 4x4 input. With cond_dim=0 it is
    the unconditional generator for pretraining; its weights load into the conditional one wherever the shapes
    agree (all but the input layer and the conditional norms' gain/shift).
    """

    residual = True

    def __init__(self, cond_dim: int = 1024, z_dim: int = 100, ngf: int = 64, proj_dim: int = 128) -> None:
        super().__init__()
        self.cond_dim, self.z_dim = cond_dim, z_dim
        self.project = ConditionProjection(cond_dim, proj_dim) if cond_dim > 0 else None
        emb = proj_dim if cond_dim > 0 else 0
        self.ngf = ngf
        self.input = nn.Linear(z_dim + emb, ngf * 8 * 16)
        self.blocks, self.out_norm, self.to_rgb = _resnet_decoder(ngf, emb)
        _init_generator(self)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = None if self.project is None else self.project(cond).to(z.dtype)
        h = z if emb is None else torch.cat([z, emb], dim=1)
        x = self.input(h).view(-1, self.ngf * 8, 4, 4)
        for block in self.blocks:
            x = block(x, emb)
        return torch.tanh(self.to_rgb(torch.relu(self.out_norm(x))))


class DownBlock(nn.Module):
    """conv 4x4 stride 2 - batch norm - leaky ReLU: the encoder step of RetrievalGenerator (pix2pix's U-Net)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 4, 2, 1, bias=False)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.leaky_relu(self.norm(self.conv(x)), SLOPE)


class RetrievalGenerator(nn.Module):
    """A retrieval-augmented generator: it draws from the sound AND from a real training frame whose sound is
    near, so it varies a scene it has seen the instrument in instead of inventing one from a 1024-d vector.

    Instance conditioning after IC-GAN (Casanova et al. 2021, "Instance-Conditioned GAN"), whose generator draws
    the neighbourhood of an instance, with the instance found by retrieval as in retrieval-augmented generation
    (Blattmann et al. 2022). The generator holds its gallery (the training frames, their sound features and their
    video groups) as buffers, so a checkpoint carries everything it draws from and `generator(z, cond)` is called
    like every other generator. For each sound it takes the `neighbours` training clips with the nearest sound
    features and draws from one of them, chosen by the noise (Phi(z_0), uniform): K samples of one sound see
    different neighbours. While training, `exclude_groups` keeps a clip's own video group (its player and room)
    out of its neighbours, as a held-out sound's player never is in the gallery.

    With `edit`, the network draws a change to the neighbour frame rather than a frame: its output is added to the
    neighbour's pixels in tanh's logits before the tanh, the global residual of image-restoration networks (VDSR,
    Kim et al. 2016). The instrument's thin shapes then pass through whole unless the sound, the L1 term or the
    critic ask for a change; the memorisation check (his.eval's nearest training frame) says how near a copy
    that leaves the images.

    With `heard_class`, the neighbours are the nearest among the training frames of the class a linear reader of
    the sound hears (`his.probe`, fitted on the gallery's sounds and labels by set_gallery): the class-conditional
    form of IC-GAN's instance conditioning, with the class read off the sound. A sound's nearest clips are often
    of another class (on 10 classes, 1 in 4 of the 8 nearest) where the reader hears the class 9 times in 10.

    The network is a U-Net (pix2pix, Isola et al. 2017) on ResNetGenerator's decoder: the neighbour frame is
    encoded 64 -> 4 px with the decoder's widths; the bottleneck adds its 4 px map to the projected z and sound,
    and the UpBlocks (the sound and z in every block's conditional batch norm) draw back up to 64 px, the
    encoder's 8, 16 and 32 px maps added in on the way (the skips carry the instrument's thin shapes that a 4x4
    code loses; added, not concatenated, so the decoder costs what ResNetGenerator's does). The gallery images
    are float16 in [-1, 1]: an exponential moving average of the weights leaves them exactly as they are.
    """

    residual = True
    # the buffers that hold what it draws from (fixed while training; a checkpoint's have its gallery's size)
    GALLERY = ("gallery_images", "gallery_features", "gallery_groups", "gallery_labels", "reader_weight", "reader_bias")

    def __init__(self, cond_dim: int = 1024, z_dim: int = 100, ngf: int = 64, proj_dim: int = 128,
                 neighbours: int = 8, heard_class: bool = False, edit: bool = False) -> None:
        super().__init__()
        if cond_dim <= 0:
            raise ValueError("a retrieval generator looks its neighbours up by sound: it needs cond_dim > 0")
        self.cond_dim, self.z_dim, self.ngf, self.neighbours = cond_dim, z_dim, ngf, neighbours
        self.heard_class, self.edit = heard_class, edit
        self.project = ConditionProjection(cond_dim, proj_dim)
        emb = proj_dim + z_dim
        widths = [ngf * w for w in DECODER_WIDTHS]  # the decoder's, at 4 .. 64 px
        self.stem = nn.Conv2d(3, ngf, 3, padding=1)
        self.down = nn.ModuleList(DownBlock(a, b) for a, b in zip(widths[:0:-1], widths[-2::-1]))  # 32 .. 4 px
        self.input = nn.Linear(emb, ngf * 8 * 16)
        self.blocks, self.out_norm, self.to_rgb = _resnet_decoder(ngf, emb)  # 8 .. 64 px
        _init_generator(self)
        self.register_buffer("gallery_images", torch.zeros(0, 3, 64, 64, dtype=torch.float16))
        self.register_buffer("gallery_features", torch.zeros(0, cond_dim))
        self.register_buffer("gallery_groups", torch.zeros(0, dtype=torch.long))
        if heard_class:  # the gallery's class labels and the linear reader of the class a sound is heard as
            self.register_buffer("gallery_labels", torch.zeros(0, dtype=torch.long))
            self.register_buffer("reader_weight", torch.zeros(cond_dim, 0))
            self.register_buffer("reader_bias", torch.zeros(0))

    def set_gallery(self, images: torch.Tensor, features: torch.Tensor, groups: torch.Tensor,
                    labels: torch.Tensor | None = None) -> None:
        """The frames it draws from: images (N, 3, 64, 64) in [-1, 1], their sounds' features (N, cond_dim),
        their video groups (N,) and, with heard_class, their class labels (N,), on which the reader is fitted."""
        if not len(images) == len(features) == len(groups) > 0:
            raise ValueError(f"a gallery needs as many images, features and groups, at least one: got "
                             f"{len(images)}, {len(features)}, {len(groups)}")
        device = self.gallery_features.device
        self.gallery_images = images.to(device, torch.float16)
        self.gallery_features = features.to(device, torch.float32)
        self.gallery_groups = groups.to(device, torch.long)
        if self.heard_class:
            if labels is None or len(labels) != len(features):
                raise ValueError("a heard-class retrieval generator needs the gallery's class labels, one per row")
            weight, bias = fit_linear_probe(features, labels, int(labels.max()) + 1)
            self.gallery_labels = labels.to(device, torch.long)
            self.reader_weight, self.reader_bias = weight.to(device, torch.float32), bias.to(device, torch.float32)

    def heard(self, cond: torch.Tensor) -> torch.Tensor:
        """The class the linear reader hears in each sound (B,)."""
        return (cond.float() @ self.reader_weight + self.reader_bias).argmax(1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # a checkpoint's gallery has its own size: take it as it is
        for name in (n for n in self.GALLERY if hasattr(self, n)):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def neighbour_rows(self, cond: torch.Tensor, z: torch.Tensor,
                       exclude_groups: torch.Tensor | None = None) -> torch.Tensor:
        """For each sound, the gallery row it draws from: one of its `neighbours` nearest, picked by z_0."""
        if len(self.gallery_features) == 0:
            raise RuntimeError("RetrievalGenerator has no gallery: call set_gallery() or load a checkpoint")
        distances = torch.cdist(cond.float(), self.gallery_features)
        allowed = torch.ones_like(distances, dtype=torch.bool)
        if exclude_groups is not None:
            allowed &= exclude_groups[:, None] != self.gallery_groups[None]
        if self.heard_class:  # a heard class whose every row is excluded (one video, while training): any class
            in_class = allowed & (self.heard(cond)[:, None] == self.gallery_labels[None])
            allowed = torch.where(in_class.any(1, keepdim=True), in_class, allowed)
        allowed |= ~allowed.any(1, keepdim=True)  # nothing left at all (a gallery of one group): every row
        k = min(self.neighbours, len(self.gallery_features))
        nearest = distances.masked_fill(~allowed, float("inf")).topk(k, dim=1, largest=False).indices
        choices = allowed.sum(1).clamp(max=k)
        pick = torch.minimum((torch.special.ndtr(z[:, 0].float()) * choices).long(), choices - 1)
        return nearest[torch.arange(len(nearest), device=nearest.device), pick]

    def forward(self, z: torch.Tensor, cond: torch.Tensor,
                exclude_groups: torch.Tensor | None = None) -> torch.Tensor:
        neighbour = self.gallery_images[self.neighbour_rows(cond, z, exclude_groups)].to(z.dtype)
        emb = torch.cat([self.project(cond).to(z.dtype), z], dim=1)
        skips = [nn.functional.leaky_relu(self.stem(neighbour), SLOPE)]
        for down in self.down:
            skips.append(down(skips[-1]))  # 32, 16, 8, 4 px
        x = skips.pop() + self.input(emb).view(-1, self.ngf * 8, 4, 4)
        for block in self.blocks:
            x = block(x, emb)
            if len(skips) > 1:  # the 8, 16 and 32 px maps (the 64 px stem only feeds the encoder)
                x = x + skips.pop()
        out = self.to_rgb(torch.relu(self.out_norm(x)))
        if self.edit:  # a change to the neighbour (its pixels held off +-1, where atanh is infinite)
            out = out + torch.atanh(neighbour.clamp(-EDIT_EDGE, EDIT_EDGE))
        return torch.tanh(out)


EDIT_EDGE = 0.999  # atanh(0.999) = 3.8: a pixel at +-1 comes back within 0.001 of it


class ImageEncoder(nn.Module):
    """64x64 image -> a unit vector of embed_dim: the stem and DownBlocks of RetrievalGenerator's encoder
    (64 -> 4 px at the decoder's widths), then a 1x1 convolution to embed_dim / 16 channels, flattened: the
    image embedding space of the two-stage method, in which a picture is described without any sound. It is a
    4x4 map read as one vector, so it keeps where things are, which the decoder draws from directly."""

    def __init__(self, ngf: int, embed_dim: int) -> None:
        super().__init__()
        if embed_dim % 16:
            raise ValueError(f"embed_dim must be a multiple of 16 (a 4x4 map), got {embed_dim}")
        widths = [ngf * w for w in DECODER_WIDTHS]
        self.stem = nn.Conv2d(3, ngf, 3, padding=1)
        self.down = nn.Sequential(*(DownBlock(a, b) for a, b in zip(widths[:0:-1], widths[-2::-1])))  # 32 .. 4 px
        self.out = nn.Conv2d(widths[0], embed_dim // 16, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.down(nn.functional.leaky_relu(self.stem(image), SLOPE))
        return nn.functional.normalize(self.out(h).flatten(1), dim=1)


class EmbeddingDecoder(nn.Module):
    """Draws from noise z and an ImageEncoder embedding h: ResNetGenerator's decoder whose 4x4 input is h read
    back as its map (a 1x1 convolution up to the decoder's width) plus a linear map of z and the projected h,
    which also enter every block's conditional batch norm: RetrievalGenerator's bottleneck, without the skips
    that a sound could not predict. h is scaled by sqrt(embed_dim), entries of unit variance as z's: at unit
    length it would reach the decoder far weaker than the noise, which it would then learn to ignore."""

    def __init__(self, z_dim: int, ngf: int, proj_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.ngf, self.embed_dim = ngf, embed_dim
        self.project = ConditionProjection(embed_dim, proj_dim)
        emb = proj_dim + z_dim
        self.lift = nn.Conv2d(embed_dim // 16, ngf * 8, 1)
        self.input = nn.Linear(emb, ngf * 8 * 16)
        self.blocks, self.out_norm, self.to_rgb = _resnet_decoder(ngf, emb)
        _init_generator(self)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        h = h * self.embed_dim**0.5
        emb = torch.cat([self.project(h), z], dim=1)
        x = self.lift(h.view(-1, self.embed_dim // 16, 4, 4)) + self.input(emb).view(-1, self.ngf * 8, 4, 4)
        for block in self.blocks:
            x = block(x, emb)
        return torch.tanh(self.to_rgb(torch.relu(self.out_norm(x))))


class InstanceGenerator(nn.Module):
    """Stage one of the two-stage method (after Sound2Scene, Sung-Bin et al. 2023): the drawing, learned without
    sound from every training frame and the PPMI images. An ImageEncoder maps an instance image to its embedding
    h, and an EmbeddingDecoder draws from z and h, as IC-GAN's generator draws an instance's neighbourhood
    (Casanova et al. 2021). `generator(z, image)` draws from the image's embedding; stage two calls the decoder
    with the embedding a sound predicts (TwoStageGenerator)."""

    def __init__(self, z_dim: int = 100, ngf: int = 64, proj_dim: int = 128, embed_dim: int = 128) -> None:
        super().__init__()
        self.cond_dim, self.z_dim, self.embed_dim = 0, z_dim, embed_dim  # it hears no sound
        self.encoder = ImageEncoder(ngf, embed_dim)
        self.decoder = EmbeddingDecoder(z_dim, ngf, proj_dim, embed_dim)
        init_weights(self.encoder)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)

    def forward(self, z: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, self.encoder(image))


class SoundToEmbedding(nn.Module):
    """Stage two's head: standardised sound features -> the image embedding space (a unit vector), an MLP with
    one hidden layer, trained with regression and InfoNCE against the embeddings of the clips' own frames."""

    def __init__(self, cond_dim: int, embed_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cond_dim, hidden), nn.LeakyReLU(SLOPE), nn.Linear(hidden, embed_dim))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(cond), dim=1)


class TwoStageGenerator(nn.Module):
    """The two-stage method's sound -> image: sound -> SoundToEmbedding -> h -> stage one's EmbeddingDecoder
    (frozen) with noise z. Called like every other generator, `generator(z, cond)`."""

    def __init__(self, cond_dim: int = 1024, z_dim: int = 100, ngf: int = 64, proj_dim: int = 128,
                 embed_dim: int = 128) -> None:
        super().__init__()
        self.cond_dim, self.z_dim, self.embed_dim = cond_dim, z_dim, embed_dim
        self.head = SoundToEmbedding(cond_dim, embed_dim)
        self.decoder = EmbeddingDecoder(z_dim, ngf, proj_dim, embed_dim)
        init_weights(self.head)

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, self.head(cond.float()).to(z.dtype))


class Critic(nn.Module):
    """Fig 4c. Returns one score per image: a logit for GAN-CLS, the critic value f(x, c) for the WGANs."""

    def __init__(
        self,
        cond_dim: int = 1024,
        ndf: int = 64,
        proj_dim: int = 128,
        norm: Norm = "batch",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        bias = norm == "none"

        def conv(cin: int, cout: int, k: int, s: int, p: int, b: bool = bias) -> nn.Module:
            layer = nn.Conv2d(cin, cout, k, s, p, bias=b)
            return _spectral_norm(layer) if spectral_norm else layer

        self.features = nn.Sequential(
            conv(3, ndf, 4, 2, 1, True), nn.LeakyReLU(SLOPE),  # 32x32, no norm on the first layer (DCGAN)
            conv(ndf, ndf * 2, 4, 2, 1), _norm(norm, ndf * 2), nn.LeakyReLU(SLOPE),  # 16x16
            conv(ndf * 2, ndf * 4, 4, 2, 1), _norm(norm, ndf * 4), nn.LeakyReLU(SLOPE),  # 8x8
            conv(ndf * 4, ndf * 8, 4, 2, 1), _norm(norm, ndf * 8), nn.LeakyReLU(SLOPE),  # 4x4
        )
        self.project = ConditionProjection(cond_dim, proj_dim) if cond_dim > 0 else None
        if self.project is not None and spectral_norm:
            self.project.linear = _spectral_norm(self.project.linear)
        joint_in = ndf * 8 + (proj_dim if cond_dim > 0 else 0)
        self.joint = nn.Sequential(conv(joint_in, ndf * 8, 1, 1, 0), _norm(norm, ndf * 8), nn.LeakyReLU(SLOPE))
        self.score = conv(ndf * 8, 1, 4, 1, 0, True)
        init_weights(self)

    def forward(self, image: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(image)
        if self.project is not None:
            c = self.project(cond)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
            h = torch.cat([h, c.to(h.dtype)], dim=1)
        return self.score(self.joint(h)).flatten()


class ProjectionCritic(nn.Module):
    """Projection discriminator (Miyato & Koyama 2018, "cGANs with Projection Discriminator"):
    f(x, c) = psi(phi(x)) + <embed(c), phi(x)>.

    phi: Critic's strided-convolution trunk (64x64 -> ndf*8 x 4x4), then global sum pooling -> (B, ndf*8).
    The paper conditions on a class id, y^T V phi(x) with y one-hot; our condition is a continuous sound
    feature, and a linear embedding of it is the natural generalisation: the same formula with y no longer
    one-hot. (It is also what a Gaussian p(c|x) with mean linear in phi(x) gives for the log density ratio,
    up to a term in x alone, which psi absorbs.) `proj_dim` (default None: a single linear map) factors
    embed into two linear maps through a proj_dim bottleneck, fewer parameters, still linear, so the
    projection form is unchanged. No bias in embed: a constant term <b, phi(x)> would just duplicate psi.

    Spectral norm on every layer by default (as in the paper); no batch norm (its batch statistics couple the
    scores of a batch); `norm="layer"` is allowed. With cond_dim=0 there is no embed: the unconditional critic
    for pretraining, whose every tensor warm-starts the conditional one (only `embed.*` starts fresh).

    n_classes > 0 adds the paper's own class term y^T V phi(x) beside the sound's: the condition is then the
    sound's features followed by the one-hot class, (B, cond_dim + n_classes), and `class_embed` (V, the one-hot
    through a linear map without bias, which is the paper's embedding lookup) has its own spectral norm, as the
    paper's SNEmbedID. Only the critic reads the class; the generator still hears only the sound.

    pool="sum" is the paper's global sum pooling. It makes the projection blind to where in the frame a feature
    is, and where is what some of our attributes are (the pitch register lifts the player). pool="flatten" keeps
    the 4x4 positions: phi(x) is the flattened map, so the projection is a sum over positions p of
    <embed_p(c), h_p(x)>, one embedding per position, still linear in the condition.
    """

    def __init__(
        self,
        cond_dim: int = 1024,
        ndf: int = 64,
        proj_dim: int | None = None,
        norm: Norm = "none",
        spectral_norm: bool = True,
        pool: str = "sum",
        n_classes: int = 0,
        aux_classes: int = 0,
    ) -> None:
        super().__init__()
        if norm not in ("layer", "none"):
            raise ValueError(f"norm of a projection critic must be 'layer' or 'none', got {norm!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if n_classes and not cond_dim:
            raise ValueError("a projection critic with classes needs a sound condition (cond_dim > 0)")
        self.pool, self.cond_dim = pool, cond_dim
        bias = norm == "none"

        def conv(cin: int, cout: int, b: bool = bias) -> nn.Module:
            return nn.Conv2d(cin, cout, 4, 2, 1, bias=b)

        self.features = nn.Sequential(
            conv(3, ndf, True), nn.LeakyReLU(SLOPE),  # 32x32
            conv(ndf, ndf * 2), _norm(norm, ndf * 2), nn.LeakyReLU(SLOPE),  # 16x16
            conv(ndf * 2, ndf * 4), _norm(norm, ndf * 4), nn.LeakyReLU(SLOPE),  # 8x8
            conv(ndf * 4, ndf * 8), _norm(norm, ndf * 8), nn.LeakyReLU(SLOPE),  # 4x4
        )
        width = ndf * 8 * (16 if pool == "flatten" else 1)
        self.psi = nn.Linear(width, 1)
        self.embed: nn.Module | None = None
        if cond_dim > 0:
            if proj_dim:
                bottleneck = nn.Linear(cond_dim, proj_dim, bias=False)
                self.embed = nn.Sequential(bottleneck, nn.Linear(proj_dim, width, bias=False))
            else:
                self.embed = nn.Linear(cond_dim, width, bias=False)
        self.class_embed = nn.Linear(n_classes, width, bias=False) if n_classes else None
        # AC-GAN's auxiliary classifier (Odena et al. 2017): the class read off phi(x), beside the score
        self.class_head = nn.Linear(width, aux_classes) if aux_classes else None
        init_weights(self)
        if spectral_norm:
            # after the initialisation, so that its power iterations start from the weights actually used
            # (registered before, as in Critic, the first scores of an SN layer are off by a factor up to ~50)
            for layer in [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
                _spectral_norm(layer)

    def phi(self, image: torch.Tensor) -> torch.Tensor:
        """Image features: the trunk globally sum-pooled (B, ndf*8), or its 4x4 map flattened (B, ndf*8*16)."""
        h = self.features(image)
        return h.sum(dim=(2, 3)) if self.pool == "sum" else h.flatten(1)

    def match(self, image: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image's features and the sound's embedding in the projection's shared space, as unit vectors
        (B, width) each: the pairs a contrastive term between image and sound compares (XMC-GAN)."""
        h = self.phi(image)
        return nn.functional.normalize(h.float(), dim=1), \
            nn.functional.normalize(self.embed(cond[:, : self.cond_dim].to(h.dtype)).float(), dim=1)

    def classify(self, image: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The auxiliary classifier's class logits (B, aux_classes); `cond` is ignored (the critics' signature)."""
        return self.class_head(self.phi(image))

    def forward(self, image: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.phi(image)
        out = self.psi(h).flatten()
        if self.embed is not None:
            cond = cond.to(h.dtype)
            embedded = self.embed(cond[:, : self.cond_dim])
            if self.class_embed is not None:
                embedded = embedded + self.class_embed(cond[:, self.cond_dim :])
            out = out + (embedded * h).sum(dim=1)
        return out


CRITICS = ("concat", "projection")
POOLS = ("sum", "flatten")


def build_critic(
    kind: str,
    cond_dim: int,
    ndf: int,
    proj_dim: int | None,
    norm: Norm | None = None,
    spectral_norm: bool | None = None,
    pool: str = "sum",
    n_classes: int = 0,
    aux_classes: int = 0,
) -> Critic | ProjectionCritic:
    """"concat": the report's Critic (fig 4c); "projection": ProjectionCritic (Miyato & Koyama 2018), its
    image features pooled by `pool`, with the class term when n_classes > 0 and AC-GAN's auxiliary classifier
    when aux_classes > 0 (projection only).

    norm / spectral_norm None take the kind's default: batch norm without spectral norm for "concat", no
    norm with spectral norm for "projection".
    """
    if kind not in CRITICS:
        raise ValueError(f"critic must be one of {CRITICS}, got {kind!r}")
    projection = kind == "projection"
    norm = norm if norm is not None else ("none" if projection else "batch")
    spectral_norm = spectral_norm if spectral_norm is not None else projection
    if projection:
        return ProjectionCritic(cond_dim, ndf, proj_dim, norm, spectral_norm, pool, n_classes, aux_classes)
    if n_classes or aux_classes:
        raise ValueError("only the projection critic takes the class (n_classes, aux_classes > 0)")
    return Critic(cond_dim, ndf, proj_dim if proj_dim is not None else 128, norm, spectral_norm)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: convolutions N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


GENERATORS = ("simple", "residual", "resnet", "retrieval", "instance", "two-stage")
Generator = SimpleGenerator | ResNetGenerator | RetrievalGenerator | InstanceGenerator | TwoStageGenerator


def build_generator(kind: str, cond_dim: int, z_dim: int, ngf: int, proj_dim: int, neighbours: int = 8,
                    embed_dim: int = 128, heard_class: bool = False, edit: bool = False) -> Generator:
    """"simple" (fig 4b), "residual" (fig 4a), "resnet" (ResNetGenerator: SN-GAN/BigGAN-style, conditional BN),
    "retrieval" (RetrievalGenerator: a U-Net over one of the `neighbours` training frames nearest by sound, among
    the frames of the class it hears with `heard_class`, drawing a change to that frame with `edit`),
    "instance" (InstanceGenerator: the two-stage method's drawing from an image embedding; hears no sound),
    "two-stage" (TwoStageGenerator: sound -> embedding -> that drawing)."""
    if kind == "retrieval":
        return RetrievalGenerator(cond_dim=cond_dim, z_dim=z_dim, ngf=ngf, proj_dim=proj_dim, neighbours=neighbours,
                                  heard_class=heard_class, edit=edit)
    if kind == "instance":
        return InstanceGenerator(z_dim=z_dim, ngf=ngf, proj_dim=proj_dim, embed_dim=embed_dim)
    if kind == "two-stage":
        return TwoStageGenerator(cond_dim=cond_dim, z_dim=z_dim, ngf=ngf, proj_dim=proj_dim, embed_dim=embed_dim)
    classes = {"simple": SimpleGenerator, "residual": ResidualGenerator, "resnet": ResNetGenerator}
    if kind not in classes:
        raise ValueError(f"generator must be one of {sorted(GENERATORS)}, got {kind!r}")
    return classes[kind](cond_dim=cond_dim, z_dim=z_dim, ngf=ngf, proj_dim=proj_dim)


def count_flops_per_image(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates x 2 of one forward pass per image, counted from conv/linear shapes."""
    flops = 0

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(m, nn.Linear):
            flops += 2 * m.in_features * m.out_features
        elif isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            flops += 2 * k * out[0].numel()
        elif isinstance(m, nn.ConvTranspose2d):
            x = args[0][0]
            k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            flops += 2 * k * x.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(*[t[:1] for t in inputs])
    finally:
        for h in handles:
            h.remove()
    return flops
