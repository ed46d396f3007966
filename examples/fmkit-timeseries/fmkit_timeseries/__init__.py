"""fmkit-timeseries: an example third-party plugin adding a time-series modality to fmkit."""
