"""Stage `puzzles`: known-answer neuron puzzles that measure a simulator against explanations
whose truth is known.
"""
