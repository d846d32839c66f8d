"""Read-only views over a run: report tables, the plot, one neuron in the terminal, the HTML site.

`report` aggregates scores (pure functions over DataFrames) and renders tables; `plot` draws the
figure; `neuron` assembles everything shown about one neuron as data; `terminal` (`explain show`)
and `html` (`explain view`, with `assets/`) render that data; `formats` holds the number formats
they share. Reads the run directory through `run` only; never writes a table.
"""
