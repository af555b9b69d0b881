"""cmcr.results"""
