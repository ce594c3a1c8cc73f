"""ApolloScape reference tables typed in from IntRA-KD, independently of the code under test.

Shared by the reader tests (test_apolloscape_data.py) and the evaluation tests
(test_apolloscape_eval.py), which check the package's one class table against them.
"""

# IntRA-KD road_npy2img.py `new_list`: train id t -> ApolloScape id (36 -> 249, then 255).
NEW_LIST = [0, 200, 204, 213, 209, 206, 207, 201, 203, 211, 208, 216, 217, 215, 218, 219, 210,
            232, 214, 202, 220, 221, 222, 231, 224, 225, 226, 230, 228, 229, 233, 205, 212, 227,
            223, 250, 249, 255]  # fmt: skip
# The colour hashes B*5+G*3+R of IntRA-KD `origin_id`, in the same order (DATASETS.md 3.3, 3.5).
ORIGIN_HASH = [0, 1360, 580, 768, 255, 300, 680, 710, 312, 1509, 800, 1377, 880, 910, 1188, 128,
               960, 1784, 1414, 1150, 512, 1162, 950, 750, 1575, 708, 2111, 1848, 1071, 1204,
               892, 639, 2040, 1524, 832, 1122, 1224, 2295]  # fmt: skip
