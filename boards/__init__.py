"""gpt2accel.boards"""
