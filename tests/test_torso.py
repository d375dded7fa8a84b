"""The torso path (issue 15): bands, the Torso-Inpainting Restorer, the torso field's Adaptive Pose
Encoding, the render-time path, the [torso] presets and the measures."""

import shutil

import numpy as np
import pytest
import torch

from headsync.core.config import load_preset, preset_names, section
from headsync.core.errors import UserError
from headsync.core.progress import silent
from headsync.evaluation import torso_metrics as tm
from headsync.post import portrait
from headsync.post.torso import bands
from headsync.post.torso import field as torso_field
from headsync.post.torso import restorer as torso_restorer
from headsync.post.torso.config import MODES, TorsoConfig
from headsync.post.torso.path import TorsoLayer, TorsoPath, chin_coverage, render_hole
from headsync.renderers.common.cameras import Intrinsics, project
from headsync.training import torso as torso_training


def scene(s=64):
    """A face (skin, eyes, lips) over a neck and torso on a dark plate; image (s, s, 3) float, labels."""
    labels = np.zeros((s, s), np.uint8)
    yy, xx = np.mgrid[:s, :s]
    face = ((xx - s / 2) / (0.22 * s)) ** 2 + ((yy - 0.38 * s) / (0.3 * s)) ** 2 <= 1
    labels[(yy > 0.6 * s) & (abs(xx - s / 2) < 0.12 * s)] = 5
    labels[yy > 0.8 * s] = 6
    labels[face] = 1
    labels[face & (abs(yy - 0.3 * s) < 0.03 * s)] = 3
    labels[face & (abs(yy - 0.52 * s) < 0.03 * s) & (abs(xx - s / 2) < 0.08 * s)] = 2
    img = np.full((s, s, 3), 0.05, np.float32)
    img[labels == 1] = (0.85, 0.65, 0.55)
    img[labels == 5] = (0.8, 0.6, 0.5)
    img[labels == 6] = (0.2, 0.3, 0.7)
    img[labels == 2] = (0.6, 0.2, 0.2)
    return img, labels


# ---- bands ----------------------------------------------------------------------------------------------

def test_expansion_scales_with_the_crop_side():
    assert bands.scaled_px(15, 512) == 15 and bands.scaled_px(15, 256) == 8 and bands.scaled_px(10, 32) == 1


def test_expansion_grows_the_cheeks_and_chin_but_not_the_forehead():
    _, labels = scene()
    m = bands.face_mask(labels)
    g = bands.expand_lower(m, 4, labels)
    assert (g >= m).all() and g.sum() > m.sum()
    eye_row = int(np.nonzero((labels == 3).any(1))[0].mean())
    np.testing.assert_array_equal(g[:eye_row], m[:eye_row])  # forehead and hair untouched
    rows = np.nonzero(m.any(1))[0]
    assert g[rows[-1] + 3].any() and not g[rows[-1] + 6].any()  # the chin grew by about 4 px
    ring = bands.gap_band(labels, 4)
    assert not (ring & m).any() and ring.any()


def test_chin_neck_band_lies_below_the_mouth_on_the_face_edge():
    _, labels = scene()
    b = bands.chin_neck_band(labels, 3)
    lips_row = int(np.nonzero((labels == 2).any(1))[0].mean())
    assert b.any() and not b[:lips_row].any()
    assert (labels[b] == 1).any() and (labels[b] == 5).any()  # straddles the chin: face rim and neck
    assert not (labels[b] == 2).any() and not (labels[b] == 0).any()  # never the mouth, never background
    # a rendered face whose jaw drops 4 px: the band follows the rendered jaw, not the source's
    face = bands.face_mask(labels)
    low = face | np.roll(face, 4, axis=0)
    moved = bands.chin_neck_band(labels, 3, face=low)
    assert np.nonzero(moved.any(1))[0].max() == np.nonzero(b.any(1))[0].max() + 4
    assert not bands.chin_neck_band(np.zeros((16, 16), np.uint8), 2).any()


def test_rotation_keeps_label_values():
    img, labels = scene()
    r_img, r_lab = bands.rotate(img, labels, 10.0)
    assert r_img.shape == img.shape and set(np.unique(r_lab)) <= set(np.unique(labels))


# ---- restorer -------------------------------------------------------------------------------------------

def test_restorer_keeps_every_known_pixel(one_torch_thread):
    img, labels = scene(32)
    net = torso_restorer.TorsoRestorer(width=4, depth=2).eval()
    net.side = 32
    m = bands.face_mask(labels)
    removed = bands.expand_lower(m, 3, labels)
    hole = removed & ~m
    face, alpha = img * m[..., None], m.astype(np.float32)
    out = torso_restorer.inpaint(net, face, alpha, np.where(removed[..., None], 0.0, img), hole)
    assert out.shape == img.shape and np.isfinite(out).all()
    known = ~hole
    np.testing.assert_allclose(out[known], (face + (1 - alpha[..., None]) * img)[known], atol=1e-6)
    assert (out[hole] >= 0).all() and (out[hole] <= 1).all()


def test_restorer_training_lowers_its_loss_and_beats_the_neck_colour(one_torch_thread):
    imgs, labs = zip(*[scene(32) for _ in range(4)])
    frames = torso_training.Frames(np.stack(imgs), np.stack(labs))
    cfg = TorsoConfig(restorer_resolution=32, restorer_width=8, restorer_depth=2, restorer_steps=60,
                      restorer_batch=2, restorer_lr=1e-2, expand_min=40, expand_max=80, perceptual_weight=0.2)
    net, info = torso_training.train_restorer(frames, cfg, torch.device("cpu"), silent())
    assert info["final_loss"] < 0.05 and info["perceptual"] in ("lpips", "ssim")
    img, labels = scene(32)
    m = bands.face_mask(labels)
    removed = bands.expand_lower(m, bands.scaled_px(60, 32), labels)
    band = removed & ~m
    out = torso_restorer.inpaint(net, img * m[..., None], m.astype(np.float32),
                                 np.where(removed[..., None], 0.0, img), band)
    fake = labels.copy()
    fake[band] = 1
    today = portrait.fill_gaps(img * m[..., None], m.astype(np.float32), img, fake, portrait.neck_colour(img, labels))
    assert tm.band_psnr(out, img, band) > tm.band_psnr(today, img, band)


def test_restorer_load_says_what_to_run(tmp_path):
    with pytest.raises(UserError, match="no torso restorer"):
        torso_restorer.load(tmp_path / "restorer.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError):
        torso_restorer.load(tmp_path / "bad.pt")


# ---- torso field ----------------------------------------------------------------------------------------

K64 = Intrinsics(80.0, 32.0, 32.0, 64)


def yaw(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def test_adaptive_pose_encoding_is_the_projection_of_the_key_points():
    keys = np.array([[0.0, 3.0, -3.0], [-2.0, 3.0, -3.0], [2.0, 3.0, -3.0]], np.float32)  # chin-like: in front
    R, T = np.eye(3), np.array([0.0, 0.0, 30.0])
    enc = torso_field.project_keypoints(torch.as_tensor(keys), torch.as_tensor(R[None], dtype=torch.float32),
                                        torch.as_tensor(T[None], dtype=torch.float32), K64)
    px = (enc[0].numpy() + 1) / 2 * 64
    np.testing.assert_allclose(px, project(K64, R, T, keys), atol=1e-4)
    R2 = yaw(10.0)
    moved = project(K64, R2, T, keys)
    assert tm.keypoint_motion(moved, px) > 1.0  # a yaw about the head centre moves the encoding


def test_initial_key_points_sit_below_the_face():
    tpl = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32) * [3, 4, 2]
    R, T = yaw(5.0), np.array([0.5, -0.5, 30.0])
    keys = torso_field.initial_keypoints(tpl, R, T)
    face_px, key_px = project(K64, R, T, tpl), project(K64, R, T, keys)
    assert (key_px[:, 1] > face_px[:, 1].max()).all()
    assert key_px[1, 0] < key_px[0, 0] < key_px[2, 0]


def torso_scene(shift_px, s=32):
    """A torso block whose horizontal position is ``shift_px``; the 'head' above it is unseen."""
    img, labels = np.full((s, s, 3), 0.1, np.float32), np.zeros((s, s), np.uint8)
    x0 = int(round(s / 2 - 6 + shift_px))
    labels[20:, x0:x0 + 12] = 6
    labels[4:18, x0 + 2:x0 + 10] = 1
    img[labels == 6] = (0.9, 0.3, 0.2)
    return img, labels


def test_the_torso_field_follows_the_head_pose(one_torch_thread):
    """Trained on frames where the torso sits under a head translated sideways, the field moves its
    torso with a head translation it never saw exactly (ER-NeRF: the torso follows the pose)."""
    K = Intrinsics(40.0, 16.0, 16.0, 32)
    shifts = np.array([-5.0, -2.5, 0.0, 2.5, 5.0])
    Ts = np.array([[s * 30.0 / 40.0, 0.0, 30.0] for s in shifts])  # shift_px = focal * tx / tz
    Rs = np.repeat(np.eye(3)[None], len(shifts), 0)
    imgs, labs = zip(*[torso_scene(s) for s in shifts])
    plate = np.full((32, 32, 3), 0.1, np.float32)
    targets = {"layer": np.stack(imgs), "seen": (~np.isin(np.stack(labs), (1, 2, 3, 4))).astype(np.float32),
               "torso": (np.stack(labs) == 6).astype(np.float32), "plate": plate}
    keys = np.array([[0.0, 6.0, 0.0], [-4.0, 6.0, 0.0], [4.0, 6.0, 0.0]], np.float32)
    cfg = TorsoConfig(field_steps=300, field_rays=1024, field_lr=1e-2, field_hidden=32, field_levels=2,
                      field_base_resolution=8)
    net, info = torso_training.train_field(targets, Rs, Ts, K, keys, cfg, torch.device("cpu"), silent())
    centroid = []
    for tx in (-3.0, 3.0):  # unseen shifts of -4 and +4 px
        with torch.no_grad():
            _, a = net.render(torch.eye(3), torch.tensor([tx, 0.0, 30.0]), K, 32)
        a = a.numpy()
        assert (a >= 0.5).any()
        centroid.append(np.nonzero(a >= 0.5)[1].mean())
    assert centroid[1] - centroid[0] > 4.0  # 8 px apart in truth


def test_field_round_trips_through_its_record(tmp_path, one_torch_thread):
    keys = np.zeros((3, 3), np.float32)
    net = torso_field.TorsoField(keys, hidden=16, levels=2, base_resolution=8, features=2)
    torch.save(torso_field.record(net, 32, {"steps": 0}), tmp_path / "field.pt")
    back = torso_field.load(tmp_path / "field.pt")
    assert back.side == 32 and back.hparams == net.hparams
    x = torso_field.pixel_positions(8)[None]
    enc = torch.zeros(1, 6)
    torch.testing.assert_close(back(x, enc)["rgb"], net(x, enc)["rgb"])


# ---- the render-time path -------------------------------------------------------------------------------

def test_source_path_is_todays_portrait_gap_fill():
    img, labels = scene(32)
    crop = (img * 255).astype(np.uint8)
    plate = np.zeros_like(crop)
    p = TorsoPath("source", TorsoConfig(mode="source"))
    layer = p.layer(crop, labels, plate, np.eye(3), np.zeros(3), K64)
    assert layer.region is None
    op = (labels == 1).astype(np.float32)
    head = img * op[..., None]
    np.testing.assert_allclose(p.composite(head, op, layer, labels, img),
                               portrait.fill_gaps(head, op, layer.background, labels, portrait.neck_colour(img, labels)))


def test_restorer_path_fills_only_the_uncovered_band(one_torch_thread):
    img, labels = scene(32)
    net = torso_restorer.TorsoRestorer(width=4, depth=2).eval()
    net.side = 32
    p = TorsoPath("restorer", TorsoConfig(mode="restorer"), restorer=net)
    op = np.zeros((32, 32), np.float32)
    op[: 20] = bands.face_mask(labels)[:20]  # the head leaves the lower face uncovered
    head = img * op[..., None]
    out = p.composite(head, op, TorsoLayer(img, None), labels, img)
    hole = render_hole(labels, p.cfg.expand_render) & (op < 0.5)
    np.testing.assert_allclose(out[~hole], (head + (1 - op[..., None]) * img)[~hole], atol=1e-6)


def field_scene():
    """The 32 px scene, its crop (uint8) and a small untrained field path with key points under the chin."""
    img, labels = scene(32)
    net = torso_field.TorsoField(np.array([[0, 3, 0], [-2, 3, 0], [2, 3, 0]], np.float32), 16, 2, 8, 2).eval()
    net.side = 16
    return img, labels, (img * 255).astype(np.uint8), TorsoPath("field", TorsoConfig(mode="field"), field=net)


def test_field_path_merges_the_whole_person(one_torch_thread):
    img, labels, crop, p = field_scene()
    layer = p.layer(crop, labels, np.zeros_like(crop), np.eye(3), np.array([0.0, 0.0, 30.0]), K64.scaled(32))
    assert layer.background.shape == (32, 32, 3) and layer.region[labels > 0].all()
    m = portrait.merge_mask(labels, np.zeros((32, 32), np.float32), portrait.PortraitConfig(),
                            region=layer.region)
    assert m[labels == 6].min() > 0.4  # the torso is merged from the field too


def test_restorer_blends_a_soft_jaw_edge_with_the_restored_torso_not_black(one_torch_thread):
    img, labels = scene(32)
    net = torso_restorer.TorsoRestorer(width=4, depth=2).eval()
    net.side = 32
    p = TorsoPath("restorer", TorsoConfig(mode="restorer"), restorer=net)
    removed = render_hole(labels, p.cfg.expand_render)
    op = removed.astype(np.float32) * 0.7  # a head covering the removed pixels only partly (its soft edge)
    head = img * op[..., None]
    out = p.composite(head, op, TorsoLayer(img, None), labels, img)
    cover = chin_coverage(op, labels, p.cfg.chin_solid_opacity)
    laid = head * (cover / np.maximum(op, 1e-6))[..., None]  # the head at the coverage it is laid with
    # the removed background is zero: blended with it, the edge would be the premultiplied head alone
    assert (out[removed] - laid[removed]).sum(-1).min() > 0.1
    np.testing.assert_allclose(out[~removed], (head + (1 - op[..., None]) * img)[~removed], atol=1e-6)


def test_a_soft_chin_edge_below_the_lips_is_restored_not_laid_over_the_band(one_torch_thread):
    """The head's semi-transparent chin edge (its own chin shadow, 2026-12-02 franck dub: the dark pixels
    left under a jaw lower than the source's) is part of the restored band where it lies over the source's
    neck; above the lips, and over the plate, the head's soft edge is still laid over what is there."""
    img, labels = scene(32)
    net = torso_restorer.TorsoRestorer(width=4, depth=2).eval()
    net.side = 32
    p = TorsoPath("restorer", TorsoConfig(mode="restorer"), restorer=net)
    removed = render_hole(labels, p.cfg.expand_render)
    m = bands.face_mask(labels)
    rim = removed & ~m  # the removed band around the face, where a soft head edge lies
    below = np.zeros_like(rim)
    below[bands.mouth_row(labels):] = True
    op = np.where(m, 1.0, np.where(rim, 0.4, 0.0)).astype(np.float32)
    chin = rim & below & np.isin(labels, bands.TORSO_LABELS)  # over the source's neck
    kept = rim & ~chin  # above the lips, or over the plate
    assert chin.any() and kept.any()

    def composite(where, shade):  # the edge painted ``shade`` on ``where``
        head = np.where(where[..., None], shade, img) * op[..., None]
        return p.composite(head, op, TorsoLayer(img, None), labels, img)

    outs = [composite(chin, 0.0), composite(chin, 1.0)]  # a black and a white chin edge
    np.testing.assert_allclose(outs[0][chin], outs[1][chin], atol=1e-6)  # the edge's colour does not show
    a, b = composite(kept, 0.0), composite(kept, 1.0)
    assert np.abs(b[kept] - a[kept]).min() > 0.1  # elsewhere it does
    np.testing.assert_allclose(outs[0][m & below], img[m & below], atol=1e-6)  # the solid face stays


def test_neck_follows_the_key_points_and_the_shoulders_stay():
    from headsync.post.torso import neck

    _, labels = scene(64)
    top, shoulder = neck.neck_span(labels)
    assert labels[top].tolist().count(5) > 0 and (labels[shoulder] == 6).any() and shoulder > top
    keys = np.array([[32.0, 42.0], [26.0, 42.0], [38.0, 42.0]])
    maps = neck.follow_maps(keys, keys + [3.0, 0.0], labels)  # the head (and its key points) moved 3 px right
    img = np.zeros((64, 64), np.float32)
    img[:, 30:34] = 1  # a vertical stripe: where it lands shows how far each row moved
    out = neck.warp(img, maps)
    centre = lambda row: float((out[row] * np.arange(64)).sum() / out[row].sum())  # noqa: E731
    assert centre(top) == pytest.approx(34.5, abs=0.05)  # the top of the neck moves with the head
    assert centre(shoulder) == pytest.approx(31.5, abs=0.05) and centre(63) == pytest.approx(31.5, abs=0.05)
    mid = (top + shoulder) // 2
    assert 31.5 < centre(mid) < 34.5  # between them the neck bends
    assert neck.follow_maps(keys, keys, labels) is None and neck.warp(img, None) is img
    assert neck.follow_maps(keys, keys + 1.0, np.zeros_like(labels)) is None  # no neck: nothing to bend


def test_field_layer_bends_its_neck_for_an_edited_pose(one_torch_thread):
    from headsync.post.torso import neck

    img, labels, crop, p = field_scene()
    K, T = K64.scaled(32), np.array([0.0, 0.0, 30.0])
    still = p.layer(crop, labels, np.zeros_like(crop), np.eye(3), T, K, (np.eye(3), T))
    np.testing.assert_allclose(still.background, p.layer(crop, labels, np.zeros_like(crop), np.eye(3), T, K).background)
    turned = p.layer(crop, labels, np.zeros_like(crop), yaw(10.0), T, K, (np.eye(3), T))
    top, shoulder = neck.neck_span(labels)
    assert not np.allclose(turned.background[top], still.background[top])  # the neck moved
    np.testing.assert_allclose(turned.background[shoulder:], still.background[shoulder:], atol=1e-6)  # not the torso
    op = np.zeros((32, 32), np.float32)
    op[2:6, 2:6] = 1  # a rendered head moved onto the background is merged, not cut off
    assert portrait.merge_mask(labels, op, portrait.PortraitConfig(), region=turned.region)[2:6, 2:6].min() > 0.5


def test_for_subject_without_a_torso_job_is_the_source_path(tmp_path):
    from headsync.subject.folder import Subject

    assert TorsoPath.for_subject(Subject(tmp_path)).mode == "source"
    with pytest.raises(UserError, match="no torso restorer"):
        TorsoPath.for_subject(Subject(tmp_path), mode="restorer")


# ---- config ---------------------------------------------------------------------------------------------

def test_every_preset_has_a_valid_torso_table():
    for name in preset_names():
        cfg = section(load_preset(name), "torso", TorsoConfig)
        assert cfg.mode in MODES
    assert section(load_preset("preview"), "torso", TorsoConfig).restorer_steps <= 500  # CPU-sized


def test_bad_torso_settings_are_user_errors():
    with pytest.raises(UserError, match="unknown torso mode"):
        TorsoConfig(mode="both")
    with pytest.raises(UserError):
        TorsoConfig(expand_min=30, expand_max=10)
    with pytest.raises(UserError, match="chin_solid_opacity"):
        TorsoConfig(chin_solid_opacity=1.0)
    assert TorsoConfig(mode="field+restorer").uses_field and TorsoConfig(mode="restorer").uses_restorer
    assert not TorsoConfig(mode="source").uses_restorer


def test_torso_job_is_a_task_kind():
    from headsync import tasks

    p = tasks.validate("torso", {"subject": "/x", "mode": "field"})
    assert p["mode"] == "field"
    with pytest.raises(UserError):
        tasks.validate("torso", {"subject": "/x", "mode": "nope"})


# ---- measures -------------------------------------------------------------------------------------------

def test_band_measures():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32, 3)).astype(np.float32)
    band = np.zeros((32, 32), bool)
    band[10:20, 10:20] = True
    assert tm.band_psnr(a, a, band) == float("inf") and np.isnan(tm.band_psnr(a, a, ~np.ones_like(band)))
    b = a.copy()
    b[band] += 0.1
    assert tm.band_psnr(b, a, band) == pytest.approx(20.0, abs=1e-3)
    b[~band] = 0  # outside the band does not count
    assert tm.band_psnr(b, a, band) == pytest.approx(20.0, abs=1e-3)
    assert tm.band_ssim(a, a, band) == pytest.approx(1.0) and tm.band_ssim(rng.random((32, 32, 3)), a, band) < 0.5


def test_dark_fraction_and_seam_energy():
    img = np.full((32, 32, 3), 0.6, np.float32)
    band = np.ones((32, 32), bool)
    img[:8] = 0.1
    assert tm.dark_fraction(img, band, level=0.3) == pytest.approx(0.25)
    ramp = np.repeat(np.linspace(0, 1, 32, dtype=np.float32)[:, None, None], 3, 2) * np.ones((1, 32, 1), np.float32)
    level = tm.dark_level([ramp], [band], 25.0)  # the source's own darkest quarter sets the level
    assert tm.dark_fraction(ramp, band, level) == pytest.approx(0.25, abs=1 / 32)
    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 8:24] = 1
    smooth = np.full((32, 32, 3), 0.5, np.float32)
    seam = smooth.copy()
    seam[mask > 0] = 0.8  # a step along the mask edge
    assert tm.seam_energy(seam, mask) > 10 * (tm.seam_energy(smooth, mask) + 1e-6)


def test_head_clipping_and_key_point_motion():
    op = np.zeros((16, 16), np.float32)
    op[4:12, 4:12] = 1
    merge = np.zeros((16, 16), np.float32)
    merge[4:12, 4:8] = 1
    assert tm.head_clipping(op, merge) == pytest.approx(0.5) and tm.head_clipping(op, np.ones_like(op)) == 0
    assert tm.keypoint_motion(np.zeros((3, 2)), np.full((3, 2), [3.0, 4.0])) == pytest.approx(5.0)


# ---- the job on the bundled sample ----------------------------------------------------------------------

@pytest.mark.slow
def test_torso_job_on_the_sample(prepared_sample, tmp_path, one_torch_thread):
    from headsync import tasks
    from headsync.subject.folder import Subject

    subj = tmp_path / "subject"
    shutil.copytree(prepared_sample.root, subj, ignore=shutil.ignore_patterns("models", "renders"))
    cfg = TorsoConfig(mode="field+restorer", restorer_resolution=64, restorer_width=4, restorer_depth=2,
                      restorer_steps=8, restorer_batch=2, field_resolution=32, field_steps=8, field_rays=256,
                      field_levels=2, threads=1)
    rec = torso_training.train_torso(Subject(subj), cfg, "test", silent())
    assert rec["mode"] == "field+restorer" and rec["holdout"] is not None
    path = TorsoPath.for_subject(Subject(subj))
    assert path.mode == "field+restorer" and path.restorer.side == 64 and path.field.side == 32
    assert tasks.TASKS["torso"].function() is torso_training.torso_task


def test_no_torso_is_expected_behind_the_upper_head():
    _, labels = scene()
    up = torso_training.upper_head(labels)
    lips_row = int(np.nonzero((labels == 2).any(1))[0].mean())
    assert up.any() and not up[lips_row:].any() and not (up & ~np.isin(labels, (1, 2, 3, 4))).any()


@pytest.mark.slow
def test_render_uses_the_subjects_torso_path(tmp_path, one_torch_thread):
    """Both parts trained (tiny) on the synthetic subject, then a render goes through them."""
    from headsync import tasks
    from headsync.core import media
    from headsync.subject.folder import Subject
    from synthetic_head import trained_subject

    root = trained_subject(tmp_path / "s")
    cfg = TorsoConfig(mode="field+restorer", restorer_resolution=32, restorer_width=4, restorer_depth=2,
                      restorer_steps=4, restorer_batch=2, field_resolution=16, field_steps=4, field_rays=128,
                      field_levels=2, threads=1)
    torso_training.train_torso(Subject(root), cfg, "test", silent())
    t = np.arange(int(0.4 * media.AUDIO_RATE)) / media.AUDIO_RATE
    media.write_wav(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 200 * t))
    art = tasks.run("render", {"subject": str(root), "audio": str(tmp_path / "a.wav"), "out": str(tmp_path / "r"),
                               "portrait": False}, silent())
    assert art["torso"] == "field+restorer" and art["frame_count"] >= 1
    assert len(list((tmp_path / "r" / "frames").glob("*.png"))) == art["frame_count"]
