"""cmcr.synth"""
