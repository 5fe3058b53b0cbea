"""Numbers every part of the toolkit must agree on, defined once.

IMAGE_SIZE   side of the square frames the GANs draw and the evaluation networks read (frame64, images)
SAMPLE_RATE  Hz of all decoded audio: clip shards (attr sample_rate of datasets.h5.spec), SoundNet's input

(his.synth renders its instrument audio at its own rate, his.synth.sound.SAMPLE_RATE = 44100, before the
videos are encoded; decoding resamples to SAMPLE_RATE.)
"""

IMAGE_SIZE = 64
SAMPLE_RATE = 22050
