"""fmkit-audio: flow matching on log-mel spectrograms."""
