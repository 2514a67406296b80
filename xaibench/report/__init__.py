"""Tables, plots, the HTML/Markdown report of a run and the single-image explain view."""
