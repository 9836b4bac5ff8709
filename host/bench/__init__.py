"""The researcher's bench: profiles, plots, timelines, waveform runs, benchmarks."""
