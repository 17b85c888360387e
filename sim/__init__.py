"""gpt2accel.sim"""
