//! The overlay is checked pixel by pixel against what its geometry promises, with glyphs
//! compared to font8x8's own bitmaps rather than to a second rendering by the same code.

use super::*;

const NAMES: [&str; 7] = [
    "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger",
];
const BLACK: u32 = 0;

fn probs(values: &[f32]) -> [f32; MAX_CLASSES] {
    let mut p = [0.0; MAX_CLASSES];
    p[..values.len()].copy_from_slice(values);
    p
}

fn px(frame: &Frame, x: usize, y: usize) -> u32 {
    frame.pixels()[y * frame.width() + x]
}

/// Checks that `ch` is drawn at (x, y) with `scale`: glyph pixels in `fg`, the rest not.
fn assert_glyph(frame: &Frame, x: usize, y: usize, ch: char, scale: usize, fg: u32) {
    let glyph = font8x8::legacy::BASIC_LEGACY[ch as usize];
    for (gy, bits) in glyph.iter().enumerate() {
        for gx in 0..8 {
            let on = bits >> gx & 1 == 1;
            let got = px(frame, x + gx * scale, y + gy * scale);
            assert_eq!(
                got == fg,
                on,
                "glyph {ch:?} pixel ({gx},{gy}) at ({x},{y}) is {got:06x}"
            );
        }
    }
}

#[test]
fn box_label_and_bars_land_where_the_geometry_says() {
    let mut frame = Frame::new(320, 200);
    let p = probs(&[0.05, 0.5, 0.25, 0.05, 0.05, 0.05, 0.05]);
    let face = FaceResult::new([40.0, 50.0, 60.0, 70.0], 0.99, None, p);
    draw_faces(&mut frame, &[face], &NAMES, 1);
    let happy = CLASS_COLORS[1];

    // A 2-px outline in happy's colour, untouched inside and outside.
    for y in [50, 51, 119, 118] {
        assert_eq!(px(&frame, 70, y), happy, "horizontal edge row {y}");
    }
    for x in [40, 41, 98, 99] {
        assert_eq!(px(&frame, x, 85), happy, "vertical edge column {x}");
    }
    assert_eq!(px(&frame, 42, 85), BLACK);
    assert_eq!(px(&frame, 70, 85), BLACK);
    assert_eq!(px(&frame, 39, 85), BLACK);
    assert_eq!(px(&frame, 70, 121), BLACK);

    // "happy 50%" on a happy-coloured panel just above the box: 9 glyphs + 1 px margins.
    let (label_y, label_w) = (50 - 10, 9 * 8 + 2);
    assert_eq!(px(&frame, 40, label_y), happy);
    assert_eq!(px(&frame, 40 + label_w - 1, label_y + 9), happy);
    assert_eq!(px(&frame, 40 + label_w, label_y + 5), BLACK);
    assert_glyph(&frame, 41, label_y + 1, 'h', 1, PANEL_COLOR);
    assert_glyph(&frame, 41 + 6 * 8, label_y + 1, '5', 1, PANEL_COLOR);
    assert_glyph(&frame, 41 + 8 * 8, label_y + 1, '%', 1, PANEL_COLOR);

    // The bar chart sits right of the box: one row per class, bars of round(p * 64) px.
    let chart_x = 40 + 60 + 2;
    let bar_x = chart_x + 1 + 24 + 8;
    for (i, &prob) in p[..7].iter().enumerate() {
        let row_y = 50 + 1 + i * 10;
        let row = &frame.pixels()[(row_y + 3) * 320..(row_y + 4) * 320];
        let lit = row[bar_x..bar_x + 64]
            .iter()
            .filter(|&&c| c == CLASS_COLORS[i])
            .count();
        assert_eq!(lit, (prob * 64.0).round() as usize, "bar of class {i}");
        let track = row[bar_x..bar_x + 64]
            .iter()
            .filter(|&&c| c == BAR_TRACK_COLOR)
            .count();
        assert_eq!(lit + track, 64, "bar track of class {i}");
        assert_glyph(
            &frame,
            chart_x + 1,
            row_y,
            NAMES[i].chars().next().unwrap(),
            1,
            TEXT_COLOR,
        );
    }
}

#[test]
fn chart_moves_left_of_a_face_at_the_right_edge_and_label_inside_at_the_top() {
    let mut frame = Frame::new(320, 200);
    let face = FaceResult::new([250.0, 0.0, 60.0, 60.0], 0.9, None, probs(&[1.0]));
    draw_faces(&mut frame, &[face], &NAMES, 1);
    let neutral = CLASS_COLORS[0];
    // Label drawn inside the box's top edge, since there is no room above.
    assert_glyph(&frame, 251, 1, 'n', 1, PANEL_COLOR);
    assert_eq!(px(&frame, 250, 0), neutral);
    // Chart panel ends 2 px left of the box, and the neutral bar is full.
    let chart_w = 32 + 64 + 2;
    let chart_x = 250 - 2 - chart_w;
    assert_eq!(px(&frame, chart_x, 0), PANEL_COLOR);
    let bar_row = &frame.pixels()[4 * 320..5 * 320];
    let bar_x = chart_x + 1 + 24 + 8;
    assert!(bar_row[bar_x..bar_x + 64].iter().all(|&c| c == neutral));
}

#[test]
fn a_chart_with_no_room_beside_its_face_goes_below_instead_of_over_another_chart() {
    let mut frame = Frame::new(400, 300);
    let faces = [
        FaceResult::new([20.0, 40.0, 60.0, 60.0], 0.9, None, probs(&[1.0])),
        // Too near the right edge for its chart, and left of it is the first face's chart.
        FaceResult::new([250.0, 40.0, 60.0, 60.0], 0.9, None, probs(&[0.0, 1.0])),
    ];
    draw_faces(&mut frame, &faces, &NAMES, 1);
    // The first chart is intact right of its face: "n" of "neu" and a full neutral bar.
    assert_glyph(&frame, 82 + 1, 40 + 1, 'n', 1, TEXT_COLOR);
    assert_eq!(px(&frame, 82 + 33 + 63, 44), CLASS_COLORS[0]);
    // The second sits 2 px below its box: "h" of "hap" on the second row, a full happy bar.
    let (chart_x, chart_y) = (250, 40 + 60 + 2);
    assert_eq!(px(&frame, chart_x, chart_y), PANEL_COLOR);
    assert_glyph(&frame, chart_x + 1, chart_y + 1 + 10, 'h', 1, TEXT_COLOR);
    assert_eq!(
        px(&frame, chart_x + 33 + 63, chart_y + 1 + 10 + 4),
        CLASS_COLORS[1]
    );
}

#[test]
fn faces_partly_or_wholly_outside_the_frame_are_clipped_not_a_panic() {
    let mut frame = Frame::new(64, 48);
    let faces = [
        FaceResult::new(
            [-30.0, -20.0, 50.0, 40.0],
            0.9,
            Some([[-5.0, -5.0]; 5]),
            probs(&[0.0, 0.0, 1.0]),
        ),
        FaceResult::new([1e6, 1e6, 10.0, 10.0], 0.9, None, probs(&[1.0])),
        FaceResult::new(
            [10.0, 10.0, 0.0, 0.0],
            0.9,
            Some([[70.0, 50.0]; 5]),
            probs(&[1.0]),
        ),
        FaceResult::new([f32::NAN, 40.0, 3.0, 3.0], 0.9, None, probs(&[1.0])),
    ];
    draw_faces(&mut frame, &faces, &NAMES, 2);
    // The first box's right edge (x = 18, 19 at scale 2 -> 4 px thick: 16..20) is visible.
    assert_eq!(px(&frame, 19, 5), CLASS_COLORS[2]);
}

#[test]
fn stats_panel_shows_fps_and_stage_latencies() {
    let mut frame = Frame::new(640, 480);
    let times = StageTimes {
        capture_ms: 1.25,
        detect_ms: 7.5,
        classify_ms: 3.0,
        fps: 61.0,
    };
    draw_stats(&mut frame, &times, 2);
    // Row 0 reads "FPS        61.0" from (2*1 + 2, 2 + 2) at scale 2; row 2 starts "detect".
    assert_glyph(&frame, 4, 4, 'F', 2, TEXT_COLOR);
    assert_glyph(&frame, 4 + 16, 4, 'P', 2, TEXT_COLOR);
    let value_x = 4 + 9 * 16;
    assert_glyph(&frame, value_x + 2 * 16, 4, '6', 2, TEXT_COLOR);
    assert_glyph(&frame, value_x + 3 * 16, 4, '1', 2, TEXT_COLOR);
    assert_glyph(&frame, 4, 4 + 2 * 20, 'd', 2, TEXT_COLOR);
    assert_glyph(&frame, value_x + 3 * 16, 4 + 2 * 20, '7', 2, TEXT_COLOR);
    assert_glyph(&frame, value_x + 5 * 16, 4 + 2 * 20, '5', 2, TEXT_COLOR);
    // Nothing drawn outside the corner panel.
    assert!(frame.pixels()[200 * 640..].iter().all(|&c| c == BLACK));
}

#[test]
fn stack_text_formats_without_allocating_and_refuses_overflow() {
    let mut text = StackText::<8>::new();
    write!(text, "{:.1}", 12.345).unwrap();
    assert_eq!(text.as_str(), "12.3");
    assert!(write!(text, "123456").is_err());
    assert_eq!(text.as_str(), "12.3");
}
