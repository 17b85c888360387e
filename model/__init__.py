"""gpt2accel.model"""
