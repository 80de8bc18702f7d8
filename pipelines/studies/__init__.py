"""The paper's comparison tables as one command: presets x seeds run as one Tune grid, then tabled."""
