"""his.media on videos made here with ffmpeg: frames that encode their own number, a chirp whose pitch tells
the time (f(t) = 200 + 100 t Hz), in AVI with MPEG-4 Part 2 (xvid) and MP3 as UCF-101 has them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from his.media import MediaError, SAMPLE_RATE, decode_audio, decode_clips, parse_stream_info, probe, window_starts

# the videos: conftest.FakeVideos (fixture fake_videos)


@pytest.fixture(scope="module")
def video(tmp_path_factory, fake_videos) -> Path:
    return fake_videos.make(tmp_path_factory.mktemp("media") / "v_Test_g01_c01.avi", duration=8.0)


def test_window_starts_spread_and_bounded():
    assert window_starts(1.5, 2.0, 4) == []
    starts = window_starts(7.0, 2.0, 4)
    assert len(starts) == 3
    assert starts[0] == pytest.approx(1 / 6) and 7.0 - (starts[-1] + 2.0) == pytest.approx(1 / 6)
    assert np.allclose(np.diff(starts), 2.0 + 1 / 3)
    assert len(window_starts(60.0, 2.0, 4)) == 4


def test_frames_are_those_at_window_middles(video, fake_videos):
    clips = decode_clips(video, window_s=2.0, max_clips=3)
    assert len(clips) == 3 and clips.audio.shape == (3, 2 * SAMPLE_RATE)
    assert clips.frame64.shape == (3, 64, 64, 3) and clips.frame88.shape == (3, 66, 88, 3)
    assert np.allclose(clips.t_frame, (clips.t_start + clips.t_end) / 2, atol=1e-4)
    assert np.all(clips.t_start[1:] >= clips.t_end[:-1]) and clips.t_end[-1] <= clips.duration
    for k in range(3):
        expected = int(np.floor(clips.t_frame[k] * fake_videos.FPS))
        assert fake_videos.frame_number(clips.frame64[k]) == expected
        assert fake_videos.frame_number(clips.frame88[k]) == expected


def test_audio_is_the_window(video, fake_videos):
    clips = decode_clips(video, window_s=2.0, max_clips=3)
    for k in range(3):
        # the chirp's pitch at the window's middle dates the window to within ~0.1 s
        assert fake_videos.chirp_frequency(clips.audio[k]) == pytest.approx(200 + 100 * clips.t_frame[k], abs=10)


def test_crop_scales_with_frame_size(tmp_path, fake_videos):
    for size in [(320, 240), (640, 480)]:
        clips = decode_clips(fake_videos.make(tmp_path / f"{size[0]}.avi", 3.0, size, centre_box=True), 1.0, 2)
        crop = clips.frame64[0].astype(int)
        assert np.all(crop[2:-2, 2:-2, 2] > 230) and np.all(crop[2:-2, 2:-2, 0] < 25)  # only the blue box
        whole = clips.frame88[0].astype(int)
        assert whole[0, 0, 2] < 160 and whole[33, 44, 2] > 230  # border from outside the box, centre inside


def test_aac_audio(tmp_path, fake_videos):
    clips = decode_clips(fake_videos.make(tmp_path / "aac.avi", 4.0, audio_codec="aac"), 1.0, 2)
    assert len(clips) == 2
    assert fake_videos.chirp_frequency(clips.audio[1]) == pytest.approx(200 + 100 * clips.t_frame[1], abs=10)


def test_bad_inputs_raise_one_line_reasons(tmp_path, video, fake_videos):
    cases = {}
    cases["empty file"] = tmp_path / "empty.avi"
    cases["empty file"].write_bytes(b"")
    cases["not a readable media file"] = tmp_path / "text.avi"
    cases["not a readable media file"].write_text("this is not a video\n" * 100)
    cases["no audio stream"] = fake_videos.make(tmp_path / "mute.avi", 3.0, audio=None)
    cases["silent audio track"] = fake_videos.make(tmp_path / "silent.avi", 3.0, audio="silent")
    cases["too short"] = fake_videos.make(tmp_path / "short.avi", 0.6)
    cases["truncated"] = tmp_path / "truncated.avi"
    cases["truncated"].write_bytes(video.read_bytes()[: video.stat().st_size * 2 // 5])
    cases["no such file"] = tmp_path / "missing.avi"
    for reason, path in cases.items():
        with pytest.raises(MediaError) as e:
            decode_clips(path, window_s=1.0, max_clips=2)
        message = str(e.value)
        assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


def test_parse_stream_info():
    text = (
        "Input #0, avi, from 'x.avi':\n  Duration: 00:01:02.50, start: 0.000000, bitrate: 329 kb/s\n"
        "  Stream #0:0: Video: mpeg4 (Simple Profile) (XVID / 0x44495658), yuv420p, 320x240 [SAR 1:1 DAR 4:3],"
        " 180 kb/s, 29.97 fps, 29.97 tbr, 29.97 tbn\n  Stream #0:1: Audio: mp3 (mp3float), 44100 Hz, mono\n"
    )
    info = parse_stream_info(text)
    assert (info.duration, info.fps, info.width, info.height) == (62.5, 29.97, 320, 240)
    assert info.has_audio and info.has_video


def test_a_relative_name_with_a_colon_is_a_file_not_a_url(tmp_path, monkeypatch, fake_videos):
    fake_videos.make(tmp_path / "take:2.avi", duration=2.0)
    monkeypatch.chdir(tmp_path)
    info = probe("take:2.avi")  # without file: ffmpeg reads "take:" as a protocol and fails
    assert info.has_audio and info.duration == pytest.approx(2.0, abs=0.1)
    assert len(decode_audio("take:2.avi")) > 0


def test_a_variable_frame_rate_video_whose_sound_starts_late_is_kept_and_aligned(tmp_path, fake_videos):
    """As phone recordings are: 30 fps for 2 s, then 10 fps, the sound (the chirp) starting 0.69 s in; its
    container's duration (5.83 s) is longer than the sound (5.07 s). Kept, with the sound at its own times:
    silence before 0.69 s, and the chirp's pitch at each window's middle that of its time since 0.69 s."""
    from his.media import ffmpeg_exe
    import subprocess

    n = 98  # 60 frames at 30 fps, 38 at 10 fps: 5.8 s
    frames = np.stack([np.full((240, 320, 3), (*fake_videos.frame_colour(i), 128), np.uint8) for i in range(n)])
    path = tmp_path / "v_Phone_g01_c01.mkv"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error",
                    "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "320x240", "-r", "30", "-i", "pipe:",
                    "-itsoffset", "0.69", "-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*(200*t+50*t*t)):s=44100:d=5.07",
                    "-filter_complex", "[0:v]setpts='if(lt(N,60),N/30/TB,(2+(N-60)/10)/TB)'[v]",
                    "-map", "[v]", "-map", "1:a", "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv444p",
                    "-qp", "0", "-c:a", "aac", str(path)], input=frames.tobytes(), check=True, timeout=60)  # fmt: skip
    clips = decode_clips(path, window_s=1.0, max_clips=4)
    assert len(clips) == 4
    silent = round((0.69 - clips.t_start[0]) * SAMPLE_RATE) - 200
    assert np.abs(clips.audio[0, :silent]).max() < 2 and np.abs(clips.audio[0, silent + 400:]).max() > 1000
    for k in range(1, 4):
        heard = fake_videos.chirp_frequency(clips.audio[k])
        assert heard == pytest.approx(200 + 100 * (clips.t_frame[k] - 0.69), abs=10), k
        t = clips.t_frame[k]
        shown = int(np.floor(t * 30 + 1e-6)) if t < 2 else 60 + int(np.floor((t - 2) * 10 + 1e-6))
        assert fake_videos.frame_number(clips.frame64[k]) == shown, k
