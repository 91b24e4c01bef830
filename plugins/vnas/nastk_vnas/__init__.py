"""A V-NAS-style search space for nastk (Zhu et al., "V-NAS: Neural Architecture Search for Volumetric
Medical Image Segmentation", 3DV 2019): a fixed encoder-decoder with skip connections whose every
convolution layer picks one of the spec's cell ops by a softmax over its architecture logits."""
