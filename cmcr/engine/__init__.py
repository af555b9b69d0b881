"""cmcr.engine"""
