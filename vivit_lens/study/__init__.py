"""The paper's pipeline and its outputs: `analysis` (analyze_pair, study; split into pairs, pair_analysis,
aggregate and results), Ray runners, HTML / JSON / CSV reports, plots, tables, and the `vivit-lens` CLI.
"""
