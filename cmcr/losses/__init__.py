"""cmcr.losses"""
