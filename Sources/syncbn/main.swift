print("syncbn")
