import torch

from polymodal import positions as P


def rows(t: torch.Tensor) -> list[list[int]]:
    return t.tolist()


def test_text_positions_are_1d_rope():
    assert rows(P.text_positions(3, 3)) == [[3, 3, 3], [4, 4, 4], [5, 5, 5]]
    assert P.text_positions(0, 0).shape == (0, 3)


def test_image_grid_hand_computed():
    # a 2x3 grid starting at index 10: t = 10, h = 10 + row, w = 10 + col
    assert rows(P.image_positions(10, 2, 3)) == [
        [10, 10, 10], [10, 10, 11], [10, 10, 12],
        [10, 11, 10], [10, 11, 11], [10, 11, 12],
    ]  # fmt: skip
    # the running index continues at p + max(H, W)
    assert P.next_index(10, P.image_positions(10, 2, 3)) == 13
    assert P.next_index(10, P.image_positions(10, 4, 2)) == 14


def test_audio_positions_follow_the_clock():
    # 50 tokens/s with 25 units/s: token i at i/50 s -> t = p + round(i/2) (half to even)
    pos = P.audio_positions(7, 5, tokens_per_second=50, time_units_per_second=25)
    assert rows(pos) == [[7, 7, 7], [7, 7, 7], [8, 8, 8], [9, 9, 9], [9, 9, 9]]
    # 25 tokens/s with 25 units/s: one unit per token, like text
    assert rows(P.audio_positions(0, 3, 25, 25)) == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    # 12.5 tokens/s: 2 units apart
    assert P.audio_positions(100, 3, 12.5, 25)[:, 0].tolist() == [100, 102, 104]
    assert P.next_index(100, P.audio_positions(100, 3, 12.5, 25)) == 105


def test_sound_and_frame_at_same_second_share_t():
    tau, origin = 25.0, 40
    # a frame sampled at 2.3 s (2x2 grid) and audio codes at 25 tok/s whose token 57 is at 2.28 s, 58 at 2.32 s
    frame = P.frame_positions(origin, 2.3, 2, 2, tau)
    sound = P.timed_positions(origin, [2.3], tau)
    assert frame[0, 0].item() == sound[0, 0].item() == origin + round(2.3 * tau) == 97
    assert rows(frame) == [[97, 97, 97], [97, 97, 98], [97, 98, 97], [97, 98, 98]]
    # in a video, whatever the interleaving order, both land on one clock
    video = P.video_positions(
        origin,
        [
            P.TimedTokens((0.0,)),
            P.FrameAt(0.0, 2, 2),
            P.TimedTokens((2.3,)),
            P.FrameAt(2.3, 2, 2),
            P.TimedTokens((0.04, 2.3)),
        ],
        tau,
    )
    assert video[:, 0].tolist() == [40, 40, 40, 40, 40, 97, 97, 97, 97, 97, 41, 97]
    assert P.next_index(origin, video) == 99


def test_seconds_to_units_rounds():
    assert P.seconds_to_units([0.0, 0.019, 0.021, 1.0], 25).tolist() == [0, 0, 1, 25]
