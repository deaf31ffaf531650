"""easy-VQA demo models: build, train and record them (see README 'Demo models')."""
