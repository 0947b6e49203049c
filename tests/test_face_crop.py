"""The one face policy: gap filling, holding and the whole-frame start, with scripted detections."""
import numpy as np
import pytest

from data_pipelines import face_crop


def _scripted(monkeypatch, boxes_by_frame):
  """Frames whose value is their number; the detector answers from `boxes_by_frame`."""
  frames = [np.full((60, 80, 3), i, np.uint8) for i in range(len(boxes_by_frame))]
  monkeypatch.setattr(face_crop, "detect_largest_face",
                      lambda frame, spec: boxes_by_frame[int(frame[0, 0, 0])])
  return frames


def test_gaps_are_interpolated_or_held_by_length(monkeypatch):
  a, b, c = (20.0, 30.0, 10.0), (50.0, 30.0, 20.0), (60.0, 20.0, 30.0)
  script = [None] * 15 + [a] * 5 + [None] * 12 + [b] * 5 + [None] * 4 + [c] * 6 + [None] * 3
  frames = _scripted(monkeypatch, script)
  spec = face_crop.FaceCropSpec(smooth_window=1)  # the raw filled boxes
  track = face_crop.track_faces(frames, spec, fps=10.0)  # max_gap_s 1.0: 10 frames
  whole = face_crop.whole_frame_box(60, 80, spec)
  np.testing.assert_allclose(track.boxes[:15], [whole] * 15)      # 15 > 10 frames before a face
  np.testing.assert_allclose(track.boxes[15:20], [a] * 5)
  np.testing.assert_allclose(track.boxes[20:32], [a] * 12)        # 12 > 10: the last box held
  np.testing.assert_allclose(track.boxes[32:37], [b] * 5)
  gap = [np.array(b) + (np.array(c) - b) * k / 5 for k in range(1, 5)]
  np.testing.assert_allclose(track.boxes[37:41], gap)              # 4 <= 10: interpolated
  np.testing.assert_allclose(track.boxes[41:], [c] * 9)            # after the last face: held
  np.testing.assert_array_equal(track.detected, [box is not None for box in script])
  assert track.detected_fraction == pytest.approx(16 / 50)
  # A longer max_gap_s interpolates the 12-frame gap too; a higher frame rate makes it shorter in time.
  for longer in (face_crop.track_faces(frames, face_crop.FaceCropSpec(smooth_window=1,
                                                                      max_gap_s=2.0), 10.0),
                 face_crop.track_faces(frames, spec, 20.0)):
    np.testing.assert_allclose(longer.boxes[20:32],
                               [np.array(a) + (np.array(b) - a) * k / 13 for k in range(1, 13)])
  # The whole-frame box crops the centred square of the short side, as a clip without faces does.
  assert face_crop.crop_square((60, 80), whole, spec) == face_crop.crop_square((60, 80), None,
                                                                               spec) == (10, 0, 60)


def test_detect_every_probes_and_nearest_verdicts(monkeypatch):
  box = (40.0, 30.0, 20.0)
  script = [box] * 6 + [None] * 6 + [box] * 7
  frames = _scripted(monkeypatch, script)
  spec = face_crop.FaceCropSpec(smooth_window=1, detect_every=4)
  track = face_crop.track_faces(frames, spec, fps=25.0)
  # Probes 0, 4, 8, 12, 16 and the last frame 18; frame 8 finds nothing. Frames take the
  # nearest probe's verdict, the earlier one on a tie (6 -> 4, 10 -> 8).
  assert track.detected_fraction == pytest.approx(5 / 6)
  np.testing.assert_array_equal(np.flatnonzero(~track.detected), [7, 8, 9, 10])
  assert face_crop.track_faces(_scripted(monkeypatch, [None] * 5), spec, 25.0) is None


def test_crops_follow_the_track_and_the_spec_round_trips(monkeypatch):
  frames = _scripted(monkeypatch, [(30.0, 20.0, 10.0)] * 4)
  spec = face_crop.FaceCropSpec(smooth_window=1, margin=2.0, center_shift=0.5)
  crops, info = face_crop.crop_faces(frames, 16, spec, 25.0)
  assert info == {"detected_fraction": 1.0, "fallback_center": False}
  # Side 2 x 10 = 20 centred at (30, 20 + 5): columns 20..39, rows 15..34.
  assert face_crop.crop_square((60, 80), np.array([30.0, 20.0, 10.0]), spec) == (20, 15, 20)
  assert [c.shape for c in crops] == [(16, 16, 3)] * 4
  described = spec.describe()
  assert "1 s interpolated" in described["crop_policy"]
  assert face_crop.FaceCropSpec.from_spec({**described, "short_side": 70}) == spec
  # A spec recorded before max_gap_s existed reads with the default.
  old = {k: v for k, v in described.items() if k != "max_gap_s"}
  assert face_crop.FaceCropSpec.from_spec(old).max_gap_s == 1.0
