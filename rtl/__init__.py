"""gpt2accel.rtl"""
