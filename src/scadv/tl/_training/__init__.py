"""Training and applying classifiers: train_classifier, predict, adversarial_train."""
