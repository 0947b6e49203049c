"""Video decoding gives the pictures a player shows, at the times it shows them.

Every input is written here with PyAV: rotation flags as a phone stores them (the mp4 track header
matrix) and through FFmpeg's display matrix, variable frame rates with explicit timestamps,
streams that start late or carry no timestamps, anamorphic pixels, several video streams. The
expected pictures are the coded ones turned with numpy, the expected times the timestamps written.
"""
import fractions
import struct

import av
import numpy as np
import pytest

from data_pipelines import video_io

H, W = 64, 96  # coded (stored) size: landscape
BLOCK = 16


def _card(n: int = 6) -> np.ndarray:
  """uint8 (n, 64, 96, 3): 4 x 6 grey blocks of distinct levels, so every turn or mirror shows."""
  levels = 20 + 9 * np.arange(24).reshape(4, 6)
  card = np.kron(levels, np.ones((BLOCK, BLOCK))).astype(np.uint8)
  return np.repeat(np.stack([card] * 3, -1)[None], n, axis=0)


def _write(path, frames, *, fps=25, pts_ms=None, rotation=None, hflip=False, fmt=None,
           codec="libx264"):
  """Encodes RGB frames; pts_ms: explicit timestamps (ms); rotation: FFmpeg display matrix
  (counter-clockwise degrees, as PyAV's `set_display_rotation`)."""
  with av.open(str(path), "w", format=fmt) as c:
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    if codec == "libx264":
      s.options = {"crf": "8", "bf": "0"}
    if pts_ms is not None:
      s.time_base = s.codec_context.time_base = fractions.Fraction(1, 1000)
    if rotation is not None:
      s.set_display_rotation(rotation, hflip=hflip)
    for i, f in enumerate(frames):
      vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
      if pts_ms is not None:
        vf.pts, vf.time_base = int(pts_ms[i]), fractions.Fraction(1, 1000)
      for p in s.encode(vf):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return str(path)


def set_tkhd_rotation(path, clockwise_degrees):
  """Writes the mp4 track header matrix with which phones flag a recording turned on its side."""
  data = bytearray(open(path, "rb").read())
  at = data.find(b"tkhd")
  version = data[at + 4]
  # box type, version+flags, times, track id, reserved, duration, reserved(8), layer.. volume(8)
  offset = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 8
  one = 1 << 16
  a, b, c, d = {90: (0, one, -one, 0), 180: (-one, 0, 0, -one),
                270: (0, -one, one, 0)}[clockwise_degrees]
  data[offset:offset + 36] = struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, 1 << 30)
  open(path, "wb").write(bytes(data))


def _mean_diff(a, b):
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _readers():
  return {"pyav": video_io.read_video,
          "opencv": lambda p, **kw: video_io._read_with_opencv(  # pylint: disable=protected-access
              p, kw.get("max_frames"), kw.get("target_fps"), kw.get("max_short_side"))}


# ------------------------------------------------------------------------------------------------
# Rotation flags.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["pyav", "opencv"])
@pytest.mark.parametrize("clockwise", [90, 180, 270])
def test_track_matrix_rotation_gives_the_picture_a_player_shows(tmp_path, clockwise, reader):
  coded = _card()
  path = _write(tmp_path / "phone.mp4", coded)
  set_tkhd_rotation(path, clockwise)
  with av.open(path) as c:  # FFmpeg's own reading of the flag (counter-clockwise degrees)
    assert next(c.decode(video=0)).rotation in (-clockwise, 360 - clockwise)
  shown = np.rot90(coded[0], k=-clockwise // 90)  # numpy turns counter-clockwise for k > 0
  got = _readers()[reader](path)
  frames = np.stack(got.frames)
  assert frames.shape == (6, *shown.shape)
  assert _mean_diff(frames[0], shown) < 3.0
  # The wrong turn is far off, so the check above can fail.
  wrong = np.rot90(shown, 2)
  assert _mean_diff(frames[0], wrong) > 30.0
  np.testing.assert_allclose(got.times, np.arange(6) / 25, atol=1e-6)


@pytest.mark.parametrize("ccw, hflip", [(-90, False), (90, False), (270, False), (-180, False),
                                        (90, True), (0, True)])
def test_display_matrix_rotation_and_mirror(tmp_path, ccw, hflip):
  coded = _card(3)
  path = _write(tmp_path / "rot.mp4", coded, rotation=ccw, hflip=hflip)
  shown = np.rot90(coded[0], k=ccw // 90)
  if hflip:
    shown = shown[:, ::-1]
  frames = np.stack(video_io.read_video(path).frames)
  assert frames.shape == (3, *shown.shape)
  assert _mean_diff(frames[2], shown) < 3.0


def test_orientation_from_display_matrix_matches_numpy():
  frame = np.arange(2 * 3 * 1).reshape(2, 3, 1)
  one = 1 << 16
  for clockwise in (0, 90, 180, 270, -90, 450):
    want = np.rot90(frame, k=-clockwise // 90)
    np.testing.assert_array_equal(video_io.Orientation.clockwise(clockwise).apply(frame), want)
    rad = np.deg2rad(clockwise)
    # FFmpeg's matrix for a clockwise turn: x' = cos x - sin y, y' = sin x + cos y (y down).
    a, b = round(np.cos(rad) * one), round(np.sin(rad) * one)
    matrix = [a, b, 0, -b, a, 0, 0, 0, 1 << 30]
    np.testing.assert_array_equal(
        video_io.Orientation.from_display_matrix(matrix).apply(frame), want)


# ------------------------------------------------------------------------------------------------
# Timestamps: variable frame rate, late starts, no timestamps.
# ------------------------------------------------------------------------------------------------


def _two_rate_clip(tmp_path, first_n, first_fps, second_n, second_fps, name="vfr.mp4"):
  """Part one red-barred, part two blue-barred; returns (path, true times in s)."""
  frames = _card(first_n + second_n).copy()
  frames[:first_n, :8] = (255, 0, 0)
  frames[first_n:, :8] = (0, 0, 255)
  pts = [round(1000 * i / first_fps) for i in range(first_n)]
  t1 = round(1000 * first_n / first_fps)
  pts += [t1 + round(1000 * j / second_fps) for j in range(second_n)]
  return _write(tmp_path / name, frames, pts_ms=pts), np.array(pts) / 1000


def _bar_counts(frames):
  bar = np.stack(frames)[:, :4].reshape(len(frames), -1, 3).mean(1)
  return (int(((bar[:, 0] > 150) & (bar[:, 2] < 100)).sum()),
          int(((bar[:, 2] > 150) & (bar[:, 0] < 100)).sum()))


@pytest.mark.parametrize("reader", ["pyav", "opencv"])
def test_variable_frame_rate_times_and_resampling(tmp_path, reader):
  # 2 s at 25 fps, then 4 s at 5 fps: 70 frames whose average rate (~12 fps) fits neither part.
  path, true_t = _two_rate_clip(tmp_path, 50, 25, 20, 5)
  read = _readers()[reader]
  full = read(path)
  assert len(full.frames) == 70
  np.testing.assert_allclose(full.times, true_t, atol=1e-6)
  np.testing.assert_allclose(full.shown_until()[:-1], true_t[1:], atol=1e-6)
  assert 5.8 < full.end_time <= 6.0 + 1e-6
  five = read(path, target_fps=5)
  assert _bar_counts(five.frames) == (10, 20)
  np.testing.assert_allclose(five.times, np.arange(30) / 5, atol=1e-6)
  assert five.fps == 5.0
  # max_frames counts resampled frames; the last one is shown until the next one would be.
  cut = read(path, target_fps=5, max_frames=12)
  np.testing.assert_allclose(cut.times, np.arange(12) / 5, atol=1e-6)
  assert cut.end_time == pytest.approx(2.4)


def test_speeding_up_clip_in_matroska_resamples_by_time(tmp_path):
  # The other direction and another container: 1 s at 10 fps, then 1 s at 30 fps.
  path, true_t = _two_rate_clip(tmp_path, 10, 10, 30, 30, name="vfr.mkv")
  full = video_io.read_video(path)
  np.testing.assert_allclose(full.times, true_t, atol=1e-6)
  ten = video_io.read_video(path, target_fps=10)
  assert _bar_counts(ten.frames) == (10, 10)
  np.testing.assert_allclose(ten.times, np.arange(20) / 10, atol=2e-3)
  # A target above the fast part keeps every frame (never duplicates one).
  assert len(video_io.read_video(path, target_fps=50).frames) == 40


def test_constant_rate_resampling_keeps_the_frame_nearest_each_tick(tmp_path):
  path = _write(tmp_path / "cfr.mp4", _card(30), fps=30)
  got = video_io.read_video(path, target_fps=20)
  np.testing.assert_allclose(got.times * 30, [0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20,
                                              21, 23, 24, 26, 27, 29], atol=1e-3)
  assert video_io.read_video(path, target_fps=30).times.size == 30


@pytest.mark.parametrize("fmt, first_pts_s", [("mpegts", 1.4), ("mp4", 0.5), ("matroska", 0.5)])
def test_times_count_from_the_stream_start(tmp_path, fmt, first_pts_s):
  ext = {"mpegts": "ts", "mp4": "mp4", "matroska": "mkv"}[fmt]
  pts = [round(1000 * first_pts_s) + 40 * i for i in range(10)]
  path = _write(tmp_path / f"late.{ext}", _card(10), pts_ms=pts, fmt=fmt)
  with av.open(path) as c:
    assert next(c.decode(video=0)).time > 0.05  # the file's own clock does not start at 0
  got = video_io.read_video(path)
  np.testing.assert_allclose(got.times, np.arange(10) * 0.04, atol=1e-3)


def test_missing_timestamps_fall_back_to_the_frame_rate(tmp_path):
  path = _write(tmp_path / "raw.h264", _card(8), fmt="h264")  # an elementary stream: no pts
  with av.open(path) as c:
    assert next(c.decode(video=0)).pts is None
  got = video_io.read_video(path)
  np.testing.assert_allclose(got.times, np.arange(8) / 25, atol=1e-9)
  assert got.end_time == pytest.approx(8 / 25)


def test_clock_fills_gaps_and_backward_steps():
  clock = video_io._Clock(None, 10.0)  # pylint: disable=protected-access
  got = [clock(t) for t in (None, 5.1, 5.2, None, 5.2, 5.5)]
  np.testing.assert_allclose(got, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], atol=1e-9)
  assert clock.guessed == 3


def test_frame_folder_times_follow_the_declared_rate(tmp_path):
  import cv2  # pylint: disable=import-outside-toplevel
  for i, frame in enumerate(_card(10)):
    cv2.imwrite(str(tmp_path / f"f{i + 1}.png"), frame)
  got = video_io.read_frame_folder(str(tmp_path), folder_fps=10)
  np.testing.assert_allclose(got.times, np.arange(10) / 10)
  assert got.end_time == pytest.approx(1.0) and got.fps == got.source_fps == 10
  half = video_io.read_frame_folder(str(tmp_path), folder_fps=10, target_fps=5)
  np.testing.assert_allclose(half.times, [0, 0.2, 0.4, 0.6, 0.8])


# ------------------------------------------------------------------------------------------------
# Pixel shape and stream choice.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["pyav", "opencv"])
def test_anamorphic_pixels_are_stretched_as_players_do(tmp_path, reader):
  frames = np.zeros((4, 64, 96, 3), np.uint8)
  frames[:, :, :48] = 200  # left half bright
  path = str(tmp_path / "sar.mp4")
  with av.open(path, "w") as c:
    s = c.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
    s.codec_context.sample_aspect_ratio = fractions.Fraction(4, 3)  # 96 x 64 shown as 128 x 64
    for f in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  got = np.stack(_readers()[reader](path).frames)
  assert got.shape == (4, 64, 128, 3)
  assert got[:, :, :60].mean() > 190 and got[:, :, 68:].mean() < 10


def test_the_default_video_stream_is_read(tmp_path):
  path = str(tmp_path / "two.mkv")
  with av.open(path, "w") as c:
    other = c.add_stream("libx264", rate=25)
    other.width, other.height, other.pix_fmt = 128, 96, "yuv420p"
    other.disposition = av.stream.Disposition(0)
    main = c.add_stream("libx264", rate=25)
    main.width, main.height, main.pix_fmt = 96, 64, "yuv420p"
    main.disposition = av.stream.Disposition.default
    for f in _card(5):
      for p in other.encode(av.VideoFrame.from_ndarray(np.zeros((96, 128, 3), np.uint8),
                                                       format="rgb24")):
        c.mux(p)
      for p in main.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for s in (other, main):
      for p in s.encode():
        c.mux(p)
  got = video_io.read_video(path)
  assert got.frames[0].shape == (64, 96, 3)
  assert _mean_diff(got.frames[0], _card(1)[0]) < 3.0


def test_write_video_keeps_variable_times(tmp_path):
  times = np.array([0.0, 0.04, 0.08, 0.5, 0.9, 1.3])
  path = str(tmp_path / "w.mp4")
  video_io.write_video(path, _card(6), 10.0, times=times)
  np.testing.assert_allclose(video_io.read_video(path).times, times, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# `prepare` stores what the decoder gives.
# ------------------------------------------------------------------------------------------------


def _prepare_one(tmp_path, clip_path, *extra):
  from data_pipelines import build, records  # pylint: disable=import-outside-toplevel
  lst = tmp_path / "list.txt"
  lst.write_text(f"{clip_path} 0\n")
  out = str(tmp_path / "ds")
  assert build.main(["--list", f"test={lst}", "--out", out, "--quiet", *extra]) == 0
  clip = records.ClipDataSource(out, "test")[0]
  return records.decode_frames(clip["frames"]), clip


def test_prepare_stores_a_phone_clip_upright(tmp_path):
  from data_pipelines import synthetic  # pylint: disable=import-outside-toplevel
  upright = synthetic.render_clip(3, 8, 96, np.random.default_rng(11))[:, :, 16:80]  # 96 x 64
  coded = np.ascontiguousarray(np.rot90(upright, k=1, axes=(1, 2)))                 # 64 x 96
  path = _write(tmp_path / "phone.mp4", coded)
  set_tkhd_rotation(path, 90)
  frames, _ = _prepare_one(tmp_path, path, "--short-side", "64")
  assert frames.shape == (8, 96, 64, 3)
  assert _mean_diff(frames[4], upright[4]) < 8.0
  assert _mean_diff(frames[4], upright[4][::-1, ::-1]) > 20.0


def test_prepare_fps_follows_the_timestamps(tmp_path):
  path, _ = _two_rate_clip(tmp_path, 50, 25, 20, 5)
  frames, clip = _prepare_one(tmp_path, path, "--short-side", "64", "--fps", "5")
  assert _bar_counts(list(frames)) == (10, 20)
  assert clip["fps"] == 5.0
