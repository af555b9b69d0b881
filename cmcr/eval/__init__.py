"""cmcr.eval"""
