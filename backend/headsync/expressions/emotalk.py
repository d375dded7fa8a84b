"""EmoTalk (Peng et al., ICCV 2023): the audio-to-blendshape network SyncTalk++ takes its expressions from.

Optional: it loads when the user supplies its weights, which HeadSync never downloads by itself:

* ``EmoTalk.pth`` (registry entry ``emotalk``; CC BY-NC 4.0, non-commercial use only), from the authors'
  repository psyai-net/EmoTalk_release (``pretrain_model/EmoTalk.pth``);
* its two wav2vec 2.0 audio backbones as Hugging Face model folders in the model search folders
  (``$HEADSYNC_MODELS``, then the user's cache): ``wav2vec2-large-xlsr-53-english``
  (jonatasgrosman/wav2vec2-large-xlsr-53-english, the content encoder) and
  ``wav2vec-english-speech-emotion-recognition`` (r-f/wav2vec-english-speech-emotion-recognition, the
  emotion encoder), each with ``config.json`` (the architecture is read from it) and, when ``EmoTalk.pth``
  does not carry the encoders' weights, ``pytorch_model.bin``.

The network is rebuilt here in plain PyTorch with the original parameter names, so the original state dict
loads without the ``transformers`` package: each wav2vec 2.0 encoder (convolutional feature encoder, feature
projection, convolutional position embedding with weight normalisation, Transformer layers with pre- or
post-layer-norm as ``do_stable_layer_norm`` says); the content features are resampled from 50 to 30 rows/s
before the Transformer, the emotion features after it; then the EmoTalk head: content 1024->512, emotion
1024->832->256 (ReLU), one-hot level (2) and person (24) embeddings of 32 each, concatenated (832), one
Transformer decoder layer (4 heads, feed-forward 832) attending to the 832-d emotion features through
the alignment mask (each frame sees its own), with FaceFormer's periodic ALiBi-style bias (period 30) as
causal self-attention mask, and a linear map to 52 ARKit coefficients at 30 fps (``EMOTALK_NAMES`` order).

``predict`` follows the authors' ``demo.py`` (level 1, person 0 by default); its optional post-processing
(Savitzky-Golay smoothing, random canned blinks) is not applied: HeadSync's VQ-VAE and blink model take
that role.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import UserError

RATE = 16000
FPS = 30.0  # EmoTalk's output rate
CONTENT_DIR = "wav2vec2-large-xlsr-53-english"
EMOTION_DIR = "wav2vec-english-speech-emotion-recognition"
#: EmoTalk's output columns (its render.py's model_bsList): ARKit's 52 names, alphabetical.
EMOTALK_NAMES = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)


# ---- wav2vec 2.0 (the parts used at inference, Hugging Face parameter names) ---------------------------
@dataclass(frozen=True)
class Wav2Vec2Spec:
    """The fields of a Hugging Face ``Wav2Vec2Config`` the encoder needs (defaults: wav2vec2-large)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = True
    feat_extract_norm: str = "layer"
    do_stable_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_config(cls, cfg: dict) -> "Wav2Vec2Spec":
        kw = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg}
        for k in ("conv_dim", "conv_kernel", "conv_stride"):
            if k in kw:
                kw[k] = tuple(int(x) for x in kw[k])
        return cls(**kw)


class _ConvLayer(nn.Module):
    def __init__(self, spec: Wav2Vec2Spec, i: int):
        super().__init__()
        cin = 1 if i == 0 else spec.conv_dim[i - 1]
        cout = spec.conv_dim[i]
        self.conv = nn.Conv1d(cin, cout, spec.conv_kernel[i], spec.conv_stride[i], bias=spec.conv_bias)
        self.kind = spec.feat_extract_norm if (spec.feat_extract_norm == "layer" or i == 0) else "none"
        if self.kind == "layer":
            self.layer_norm = nn.LayerNorm(cout)
        elif self.kind == "group":
            self.layer_norm = nn.GroupNorm(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.kind == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        elif self.kind == "group":
            x = self.layer_norm(x)
        return F.gelu(x)


class _FeatureEncoder(nn.Module):
    def __init__(self, spec: Wav2Vec2Spec):
        super().__init__()
        self.conv_layers = nn.ModuleList(_ConvLayer(spec, i) for i in range(len(spec.conv_dim)))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x  # (B, C, T) at 50 rows/s


class _FeatureProjection(nn.Module):
    def __init__(self, spec: Wav2Vec2Spec):
        super().__init__()
        self.layer_norm = nn.LayerNorm(spec.conv_dim[-1], eps=spec.layer_norm_eps)
        self.projection = nn.Linear(spec.conv_dim[-1], spec.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class _WeightNormConv(nn.Module):
    """Conv1d with weight normalisation over dim 2 (``weight_g`` (1, 1, K), ``weight_v``), as HF stores it."""

    def __init__(self, spec: Wav2Vec2Spec):
        super().__init__()
        h, k, g = spec.hidden_size, spec.num_conv_pos_embeddings, spec.num_conv_pos_embedding_groups
        self.groups, self.padding = g, k // 2
        self.weight_v = nn.Parameter(torch.randn(h, h // g, k) * 0.02)
        self.weight_g = nn.Parameter(self.weight_v.detach().norm(dim=(0, 1), keepdim=True).clone())
        self.bias = nn.Parameter(torch.zeros(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)
        return F.conv1d(x, w, self.bias, padding=self.padding, groups=self.groups)


class _PositionalConv(nn.Module):
    def __init__(self, spec: Wav2Vec2Spec):
        super().__init__()
        self.conv = _WeightNormConv(spec)
        self.trim = 1 if spec.num_conv_pos_embeddings % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.transpose(1, 2))
        if self.trim:
            h = h[:, :, :-self.trim]
        return F.gelu(h).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, spec: Wav2Vec2Spec):
        super().__init__()
        d = spec.hidden_size
        self.heads = spec.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        o = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(o.transpose(1, 2).reshape(b, t, d))


class _FeedForward(nn.Module):
    def __init__(self, spec: Wav2Vec2Spec):
        super().__init__()
        self.intermediate_dense = nn.Linear(spec.hidden_size, spec.intermediate_size)
        self.output_dense = nn.Linear(spec.intermediate_size, spec.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class _EncoderLayer(nn.Module):
    def __init__(self, spec: Wav2Vec2Spec):
        super().__init__()
        self.stable = spec.do_stable_layer_norm
        self.attention = _Attention(spec)
        self.layer_norm = nn.LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps)
        self.feed_forward = _FeedForward(spec)
        self.final_layer_norm = nn.LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stable:  # pre-norm (large models)
            x = x + self.attention(self.layer_norm(x))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class _Encoder(nn.Module):
    def __init__(self, spec: Wav2Vec2Spec):
        super().__init__()
        self.stable = spec.do_stable_layer_norm
        self.pos_conv_embed = _PositionalConv(spec)
        self.layer_norm = nn.LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps)
        self.layers = nn.ModuleList(_EncoderLayer(spec) for _ in range(spec.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_conv_embed(x)
        if not self.stable:
            x = self.layer_norm(x)
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x) if self.stable else x


def interpolate_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T, D) -> (B, n, D), linear with aligned corners (EmoTalk's ``linear_interpolation``)."""
    return F.interpolate(x.transpose(1, 2), size=n, mode="linear", align_corners=True).transpose(1, 2)


class Wav2Vec2(nn.Module):
    """A wav2vec 2.0 encoder; ``resample_before``: resample to ``n`` rows before the Transformer (EmoTalk's
    content encoder) or after it (its emotion encoder)."""

    def __init__(self, spec: Wav2Vec2Spec):
        super().__init__()
        self.feature_extractor = _FeatureEncoder(spec)
        self.feature_projection = _FeatureProjection(spec)
        self.encoder = _Encoder(spec)

    def forward(self, wav: torch.Tensor, n: int, resample_before: bool) -> torch.Tensor:
        x = self.feature_extractor(wav).transpose(1, 2)
        if resample_before:
            x = interpolate_rows(x, n)
        else:  # EmoTalk resamples 50 -> 30 rows/s inside the backbone, then to the frame count after it
            x = interpolate_rows(x, max(1, int(x.shape[1] / 50.0 * 30.0)))
        x = self.encoder(self.feature_projection(x))
        return x if resample_before else interpolate_rows(x, n)


class _EmotionClassifier(nn.Module):
    """Holds the emotion backbone under the name the original checkpoint uses (``wav2vec2``)."""

    def __init__(self, spec: Wav2Vec2Spec):
        super().__init__()
        self.wav2vec2 = Wav2Vec2(spec)


# ---- the EmoTalk network ----------------------------------------------------------------------------------
def biased_mask(n_head: int, t: int, period: int) -> torch.Tensor:
    """FaceFormer's causal mask with periodic linear bias, (n_head, t, t): ``-slope_h * floor((i - j) / period)``
    for j <= i, -inf above the diagonal (the values of EmoTalk's ``init_biased_mask``, cut to t)."""
    def slopes(n: int) -> list[float]:
        def pow2(m: int) -> list[float]:
            start = 2 ** (-2 ** -(math.log2(m) - 3))
            return [start * start ** i for i in range(m)]
        if math.log2(n).is_integer():
            return pow2(n)
        c = 2 ** math.floor(math.log2(n))
        return pow2(c) + slopes(2 * c)[0::2][:n - c]

    i = torch.arange(t)
    dist = torch.div(i[:, None] - i[None, :], period, rounding_mode="floor").float()
    alibi = torch.tensor(slopes(n_head))[:, None, None] * -dist.clamp(min=0)
    return alibi.masked_fill((i[None, :] > i[:, None])[None], float("-inf"))


class EmoTalk(nn.Module):
    """EmoTalk's inference network (parameter names as in the authors' model.py)."""

    def __init__(self, content: Wav2Vec2Spec, emotion: Wav2Vec2Spec, bs_dim: int = 52, period: int = 30):
        super().__init__()
        self.audio_encoder_cont = Wav2Vec2(content)
        self.audio_encoder_emo = _EmotionClassifier(emotion)
        self.audio_feature_map_cont = nn.Linear(content.hidden_size, 512)
        self.audio_feature_map_emo = nn.Linear(emotion.hidden_size, 832)
        self.audio_feature_map_emo2 = nn.Linear(832, 256)
        self.obj_vector_level = nn.Linear(2, 32)
        self.obj_vector_person = nn.Linear(24, 32)
        layer = nn.TransformerDecoderLayer(d_model=832, nhead=4, dim_feedforward=832, batch_first=True)
        self.transformer_decoder = nn.TransformerDecoder(layer, num_layers=1)
        self.bs_map_r = nn.Linear(832, bs_dim)
        self.period = period

    @torch.no_grad()
    def predict(self, wav: torch.Tensor, level: int = 1, person: int = 0) -> torch.Tensor:
        """(1, S) normalised 16 kHz audio -> (1, ceil(S / 16000 * 30), 52) coefficients at 30 fps."""
        n = math.ceil(wav.shape[1] / RATE * FPS)
        cont = self.audio_feature_map_cont(self.audio_encoder_cont(wav, n, resample_before=True))
        emo = self.audio_feature_map_emo(self.audio_encoder_emo.wav2vec2(wav, n, resample_before=False))
        emo256 = F.relu(self.audio_feature_map_emo2(emo))
        lvl = self.obj_vector_level(F.one_hot(torch.tensor([level]), 2).float())[:, None].expand(1, n, 32)
        per = self.obj_vector_person(F.one_hot(torch.tensor([person]), 24).float())[:, None].expand(1, n, 32)
        h = torch.cat([cont, emo256, lvl, per], dim=2)
        tgt_mask = biased_mask(4, n, self.period)
        memory_mask = ~torch.eye(n, dtype=torch.bool)  # each frame attends to its own emotion feature
        return self.bs_map_r(self.transformer_decoder(h, emo, tgt_mask=tgt_mask, memory_mask=memory_mask))


# ---- loading ------------------------------------------------------------------------------------------
def _rename(key: str) -> str:
    """Newer ``transformers`` store the weight norm as a parametrization; map it onto weight_g/weight_v."""
    return (key.replace("conv.parametrizations.weight.original0", "conv.weight_g")
               .replace("conv.parametrizations.weight.original1", "conv.weight_v"))


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to replace
        raise UserError(f"cannot read {path} ({e})", "download the file again")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {_rename(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _backbone(folder: Path, prefix: str) -> tuple[Wav2Vec2Spec, dict[str, torch.Tensor], bool]:
    """(spec, its weights renamed under ``prefix``, whether the audio is normalised) of a HF model folder."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{folder} has no config.json", f"download the Hugging Face model folder into {folder}")
    spec = Wav2Vec2Spec.from_config(json.loads(cfg_path.read_text()))
    normalise = True
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        normalise = bool(json.loads(pre.read_text()).get("do_normalize", True))
    weights: dict[str, torch.Tensor] = {}
    if (folder / "pytorch_model.bin").is_file():
        for k, v in _read_state(folder / "pytorch_model.bin").items():
            weights[prefix + (k[len("wav2vec2."):] if k.startswith("wav2vec2.") else k)] = v
    return spec, weights, normalise


def build(checkpoint: Path, content_dir: Path, emotion_dir: Path) -> tuple[EmoTalk, bool]:
    """EmoTalk from its checkpoint and the two backbone folders -> (model in eval mode, normalise audio).

    Weights come from the backbones' ``pytorch_model.bin`` (when present) and then ``EmoTalk.pth`` on top;
    every parameter the network uses must be given by one of them (a :class:`UserError` lists any missing)."""
    c_spec, c_w, c_norm = _backbone(content_dir, "audio_encoder_cont.")
    e_spec, e_w, e_norm = _backbone(emotion_dir, "audio_encoder_emo.wav2vec2.")
    model = EmoTalk(c_spec, e_spec)
    state = {**c_w, **e_w, **_read_state(checkpoint)}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise UserError(f"EmoTalk's weights lack {len(missing)} parameter(s), e.g. {missing[:3]}",
                        "supply the backbones' pytorch_model.bin in their folders, or the full EmoTalk.pth")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise UserError(f"EmoTalk's weights do not fit the backbones' config.json: {bad[:3]} differ in shape",
                        "use the backbone folders EmoTalk was trained with (see `headsync models list`)")
    model.load_state_dict({k: state[k] for k in own})
    return model.eval(), c_norm and e_norm


def model_paths() -> tuple[Path, Path, Path]:
    """(EmoTalk.pth, content backbone folder, emotion backbone folder), or a UserError saying what to install."""
    from ..core import registry

    ckpt = registry.find("emotalk")
    if ckpt is None:
        raise UserError("the 'emotalk' expression generator needs EmoTalk.pth, which is not installed",
                        "get it from " + registry.entry("emotalk").url + " (CC BY-NC 4.0: non-commercial "
                        f"use only) and put it in {registry.search_dirs()[0]} as EmoTalk.pth (no checksum is "
                        "published, so `headsync models install` cannot verify it), or set [expressions] "
                        "audio_model = 'default'")
    dirs = registry.search_dirs()
    found = []
    for name in (CONTENT_DIR, EMOTION_DIR):
        hit = next((d / name for d in dirs if (d / name / "config.json").is_file()), None)
        if hit is None:
            raise UserError(f"EmoTalk needs the audio backbone folder {name}/ in {dirs[0]}",
                            f"on a machine with internet: `huggingface-cli download "
                            f"{'jonatasgrosman' if name == CONTENT_DIR else 'r-f'}/{name} --local-dir {dirs[0] / name}`")
        found.append(hit)
    return ckpt, found[0], found[1]


def normalise_audio(audio: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance: what wav2vec 2.0's feature extractor does with ``do_normalize``."""
    x = np.asarray(audio, np.float32)
    return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


def generate(audio: np.ndarray, fps: float, n_frames: int, model: EmoTalk | None = None,
             normalise: bool = True, level: int = 1, person: int = 0) -> tuple[list[str], np.ndarray]:
    """EmoTalk's 52 coefficients for 16 kHz mono ``audio``, resampled to ``n_frames`` at ``fps``:
    (names, (n_frames, 52) in [0, 1]). Loads the installed model unless ``model`` is given."""
    from .coefficients import resample

    if model is None:
        model, normalise = build(*model_paths())
    x = normalise_audio(audio) if normalise else np.asarray(audio, np.float32)
    out = model.predict(torch.as_tensor(x)[None], level, person)[0].numpy()
    values = resample(np.arange(len(out)) / FPS, out, fps, n_frames)
    return list(EMOTALK_NAMES), np.clip(values, 0.0, 1.0)
