"""Per-window expression prediction and embedding extraction for arbitrary videos.

  python -m svfap_jax predict --workdir W --video clip.mp4 --out preds.json   # or .csv
  python -m svfap_jax predict --checkpoint W/best --video videos.txt --out preds.csv
  python -m svfap_jax predict --workdir W --video clip.mp4 --render overlay.mp4
  python -m svfap_jax extract --workdir W --video clip.mp4 --out emb.npy      # or .parquet

  from svfap_jax import predict_video
  windows = predict_video("runs/dfew_fold1", "clip.mp4")     # list of per-window dicts

Inputs: a video file (mp4/avi/webm/mov/..., see `data_pipelines.video_io`), a folder of frames,
or a text file (.txt/.lst/.list) naming one video or frame folder per line (relative paths are
taken from the list's folder; anything after the first whitespace-separated token is ignored when
the whole line is not a path, so SVFAP `<path> <label>` lists work unchanged).


Front end (shared by `predict`, `extract` and the Python API; `frontend.py`): decode at the rate
and resolution the checkpoint's dataset was prepared with, face-track and crop with
`data_pipelines.face_crop` (the code `prepare` stored the training clips with) when the
checkpoint's spec says so (override with `--face-crop on|off`; a choice that differs from the
spec is warned about), JPEG round-trip and take the evaluation pipeline's centre view. Windows
(`windows.py`): `window` model frames (the model's num_frames, 16) taken every `rate` frames
(default the checkpoint's data.sampling_rate), starting at frames 0, stride, 2 * stride, ...
while start + (window - 1) * rate < num_frames; frames after the last window's end (fewer than
`stride`) are not scored. A clip shorter than one window (num_frames <= (window - 1) * rate)
gives exactly one window at frame 0 whose missing frames repeat the last frame, the way training
pads short clips. The model (`predictor.py`) scores windows in batches of `batch_size` (windows of
several videos share batches; the last batch is padded, so the model compiles once). Files and
the overlay video: `outputs.py`; the commands: `cli.py`. Checkpoints are read with
`svfap_jax.checkpoint.restore_params` and the run's module rebuilt with
`svfap_jax.api.module_from_config`; nothing here imports the trainer.

`predict` JSON (one object per video; a list of them for a list input):
  {
    "video": str,                 # the path as given
    "fps": float,                 # nominal rate of the decoded frames (after any target_fps
                                  # resampling; the average rate of a variable-rate file)
    "num_frames": int,            # decoded frames
    "duration_s": float,          # when the last decoded frame stops being shown
    "model": str,                 # registry name, e.g. "svfap_base"
    "task": "classification" | "regression",
    "labels": [str, ...],         # class names (regression: value names)
    "windows": [{
        "index": int,
        "start_s": float, "end_s": float,      # when start_frame is shown and when end_frame
                                               # gives way to the next frame
        "start_frame": int, "end_frame": int,  # first and last sampled frame (inclusive)
        "probs": [float, ...],                 # classification: softmax, one per label
        "values": [float, ...],                # regression instead of "probs"
        "label": str | null,                   # argmax class name (null for regression)
        "face_fraction": float | null,         # sampled frames with a detected face (null when
                                               # face crop is off: no detector runs)
        "mostly_no_face": bool,                # face_fraction < 0.5: scored on held/whole-frame
                                               # crops, treat with care
    }, ...],
    "timeline": [{"second": int,               # per second of video: mean of the windows
                  "probs" | "values": [...],   # overlapping [second, second + 1)
                  "label": str | null}, ...],
    "no_face_frames": [{"frame": int, "time_s": float}, ...],   # face crop on only
    "no_face_spans": [{"start_frame", "end_frame", "start_s", "end_s"}, ...],  # the same, as runs
    "preprocessing": {...},       # what was applied: face_crop, short_side, img_size, window,
                                  # stride, rate, target_fps, detector settings, source of the spec
    "warnings": [str, ...],
  }
Every time is in seconds from the start of the video stream, taken from the frames' presentation
timestamps as a player shows them (variable frame rates keep their real timeline; frame folders
run at their declared rate). Frames are turned upright by the file's rotation flag first.
A video that cannot be used gives {"video": path, "error": reason} in list mode (other videos go
on; the exit status is 1). With face crop on, a video without any detected face is an error.

`predict` CSV: one row per window: video, index, start_s, end_s, start_frame, end_frame, label,
face_fraction, mostly_no_face, then p_<label> per class (or v_<name> per regression value).

`extract` writes the pooled, normalised encoder embedding (the classifier's fc_norm output, C
values) per window and per video (the mean over its windows):
  .npy      np.save of a dict (load with np.load(path, allow_pickle=True).item()):
            {"windows": float32 (N, C), "video": float32 (C,), "window_video": int32 (N,)} for one
            video; for a list input "video" is (V, C) and window_video indexes it. A sidecar
            <out>.json holds the videos, fps, window times and preprocessing (the `predict` JSON
            without scores).
  .parquet  one row per window (kind "window") and one per video (kind "video", index -1):
            video, kind, index, start_s, end_s, start_frame, end_frame, face_fraction, embedding
            (fixed-size list of float32). Needs pyarrow.

Memory: a clip is decoded whole (at most short_side x face_source_factor pixels on the short side
with face crop, short_side without, like the builder), so split very long videos first.
"""
from __future__ import annotations
# pylint: disable=g-importing-member
from data_pipelines.face_crop import track_faces
from svfap_jax.predict.cli import extract_main, is_list_file, predict_main, read_video_list
from svfap_jax.predict.frontend import (MIN_FACE_FRACTION, Failure, NoFaceError,
                                        PreparedVideo, Preprocessing, apply_face_crop_choice,
                                        crop_square, default_short_side, model_frame,
                                        prepare_video, preprocessing_from_spec)
from svfap_jax.predict.outputs import render, write_embeddings, write_predictions
from svfap_jax.predict.predictor import (Options, Predictor, extract, load_predictor,
                                         predict, predict_video, predictor_from_checkpoint,
                                         predictor_from_model)
from svfap_jax.predict.windows import (per_frame_scores, timeline, window_frames,
                                       window_starts)
