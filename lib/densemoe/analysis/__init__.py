"""Analysis: dataset summaries, tables, figures and expert usage."""
