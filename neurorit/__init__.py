"""neurorit: mine, switch off and tune the neurons that make a RAG model follow noisy passages."""
