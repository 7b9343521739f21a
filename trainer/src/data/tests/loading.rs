//! Every dataset reader on its exact layout, and decoding failures being counted.

use super::{image_folder, write_grey, write_image};
use crate::data::decode::decode;
use crate::data::{
    eval_batches, load_dataset, preload, DatasetSpec, ImageSource, LoaderConfig, PreloadOptions,
};
use crate::labels::Expression;

fn spec(text: &str) -> DatasetSpec {
    text.parse().unwrap()
}

#[test]
fn imagefolder_maps_folder_aliases_to_canonical_classes() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path(), &["angry", "Happy", "neutral"], &[3, 2, 4]);
    std::fs::write(dir.path().join("angry/notes.txt"), "not an image").unwrap();
    let dataset = load_dataset(&spec(&format!("imagefolder:{}", dir.path().display()))).unwrap();
    assert_eq!(dataset.len(), 9);
    assert_eq!(dataset.num_classes, 7);
    assert_eq!(dataset.class_counts(), [4, 2, 0, 0, 0, 0, 3]);
    // Folders in byte order ("Happy" < "angry"), files sorted within each.
    assert_eq!(dataset.items[0].label, Some(Expression::HAPPY));
    assert_eq!(dataset.items[2].label, Some(Expression::ANGER));
    assert!(
        matches!(&dataset.items[2].source, ImageSource::File(p) if p.ends_with("angry/000.png"))
    );
}

#[test]
fn imagefolder_rejects_unknown_class_folder_listing_found_and_accepted() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path(), &["happy", "smirk"], &[1, 1]);
    let error = load_dataset(&spec(&format!("imagefolder:{}", dir.path().display())))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("unknown class folder(s) [\"smirk\"]"),
        "{error}"
    );
    assert!(error.contains("found [\"happy\", \"smirk\"]"), "{error}");
    assert!(error.contains("accepted: neutral, happy, sad"), "{error}");
}

#[test]
fn fer2013_csv_reads_rows_per_split() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fer2013.csv");
    let pixels = |v: u32| {
        (0..2304)
            .map(|i| ((i + v) % 256).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let text =
        format!(
        "emotion,pixels,Usage\n0,{},Training\n3,{},PublicTest\n6,{},Training\n5,{},PrivateTest\n",
        pixels(0), pixels(1), pixels(2), pixels(3)
    );
    std::fs::write(&path, text).unwrap();
    let all = load_dataset(&spec(&format!("fer2013-csv:{}", path.display()))).unwrap();
    assert_eq!(all.len(), 4);
    let train = load_dataset(&spec(&format!("fer2013-csv:{}#train", path.display()))).unwrap();
    let labels: Vec<_> = train.items.iter().map(|i| i.label.unwrap()).collect();
    assert_eq!(labels, [Expression::ANGER, Expression::NEUTRAL]);
    let image = decode(&train.items[1].source).unwrap().into_luma8();
    assert_eq!(image.dimensions(), (48, 48));
    assert_eq!(image.as_raw()[..3], [2, 3, 4]);
    let public =
        load_dataset(&spec(&format!("fer2013-csv:{}#publictest", path.display()))).unwrap();
    assert_eq!(public.items[0].label, Some(Expression::HAPPY));

    std::fs::write(
        &path,
        format!(
            "emotion,pixels,Usage\n0,{},Training\n2,1 2 3,Training\n",
            pixels(0)
        ),
    )
    .unwrap();
    let error = load_dataset(&spec(&format!("fer2013-csv:{}", path.display())))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("fer2013.csv:3: 3 pixel values, expected 2304"),
        "{error}"
    );
}

#[test]
fn rafdb_reads_partition_file_and_aligned_faces() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("EmoLabel")).unwrap();
    std::fs::write(
        root.join("EmoLabel/list_patition_label.txt"),
        "train_00001.jpg 5\ntrain_00002.jpg 1\ntest_0001.jpg 7\ntrain_00003.jpg 4\n",
    )
    .unwrap();
    for name in ["train_00001", "train_00002", "test_0001"] {
        write_image(
            &root.join(format!("Image/aligned/{name}_aligned.jpg")),
            100,
            100,
            1,
        );
    }
    let train = load_dataset(&spec(&format!("rafdb:{}#train", root.display()))).unwrap();
    let labels: Vec<_> = train.items.iter().map(|i| i.label.unwrap()).collect();
    assert_eq!(labels, [Expression::SAD, Expression::SURPRISE]);
    assert_eq!(train.report.missing_files, 1, "train_00003 has no image");
    assert!(train.report.first_missing[0].ends_with("Image/aligned/train_00003_aligned.jpg"));
    let test = load_dataset(&spec(&format!("rafdb:{}#test", root.display()))).unwrap();
    assert_eq!(test.items[0].label, Some(Expression::NEUTRAL));

    std::fs::write(
        root.join("EmoLabel/list_patition_label.txt"),
        "train_00001.jpg 9\n",
    )
    .unwrap();
    let error = load_dataset(&spec(&format!("rafdb:{}", root.display())))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("list_patition_label.txt:1: label out of range"),
        "{error}"
    );
}

#[test]
fn affectnet_crops_face_boxes_and_counts_dropped_rows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (i, sub) in ["101/a.jpg", "101/b.png", "202/c.jpg", "202/d.jpg"]
        .iter()
        .enumerate()
    {
        write_image(
            &root.join("Manually_Annotated_Images").join(sub),
            60,
            50,
            i as u32,
        );
    }
    let header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal";
    let rows = [
        "101/a.jpg,10,5,30,40,\"1.0;2.0\",1,0.5,0.2",
        "101/b.png,0,0,60,50,\"1.0;2.0\",7,-0.1,0.3",
        "202/c.jpg,0,0,60,50,\"\",8,-2,-2",
        "202/d.jpg,0,0,60,50,\"\",10,-2,-2",
        "303/missing.jpg,0,0,10,10,\"\",2,0,0",
    ];
    let csv = root.join("training.csv");
    std::fs::write(&csv, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
    let dataset = load_dataset(&spec(&format!("affectnet:{}", csv.display()))).unwrap();
    assert_eq!(dataset.len(), 2);
    assert_eq!(dataset.report.dropped_non_expression, 2);
    assert_eq!(dataset.report.missing_files, 1);
    assert_eq!(dataset.num_classes, 8, "contempt occurs");
    assert_eq!(dataset.class_counts(), [0, 1, 0, 0, 0, 0, 0, 1]);
    let face = decode(&dataset.items[0].source).unwrap();
    assert_eq!((face.width(), face.height()), (30, 40));

    // validation.csv ships without a header; the images may sit in a sibling folder.
    let nested = root.join("Labels");
    std::fs::create_dir_all(&nested).unwrap();
    let csv = nested.join("validation.csv");
    std::fs::write(&csv, format!("{}\n", rows[0])).unwrap();
    let dataset = load_dataset(&spec(&format!("affectnet:{}", csv.display()))).unwrap();
    assert_eq!(dataset.items[0].label, Some(Expression::HAPPY));
}

#[test]
fn folder_lists_images_recursively_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "b/x_0002.jpg",
        "a/x_0001.jpg",
        "b/x_0001.png",
        "a/readme.txt",
    ] {
        if name.ends_with(".txt") {
            std::fs::write(dir.path().join(name), "text").unwrap();
        } else {
            write_image(&dir.path().join(name), 16, 16, 3);
        }
    }
    let dataset = load_dataset(&spec(&format!("folder:{}", dir.path().display()))).unwrap();
    let keys: Vec<String> = dataset.items.iter().map(|i| i.source.key()).collect();
    let root = dir.path().display().to_string();
    assert_eq!(
        keys,
        [
            format!("{root}/a/x_0001.jpg"),
            format!("{root}/b/x_0001.png"),
            format!("{root}/b/x_0002.jpg")
        ]
    );
    assert!(dataset.items.iter().all(|i| i.label.is_none()));
}

#[test]
fn corrupt_files_are_skipped_and_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path(), &["happy", "sad"], &[3, 3]);
    write_grey(&dir.path().join("sad/grey.png"), 48, 1);
    std::fs::write(
        dir.path().join("happy/broken.jpg"),
        b"\xFF\xD8 this is not a jpeg",
    )
    .unwrap();
    let dataset = load_dataset(&spec(&format!("imagefolder:{}", dir.path().display()))).unwrap();
    assert_eq!(dataset.len(), 8);

    let options = PreloadOptions {
        max_short_side: 16,
        center_crop: 1.0,
        progress: false,
    };
    let (loaded, report) = preload(&dataset, &options).unwrap();
    assert_eq!(report.count, 1);
    assert!(report.first[0].contains("broken.jpg"), "{report}");
    assert_eq!(loaded.len(), 7);
    let grey = loaded
        .items
        .iter()
        .find(|i| i.source.key().ends_with("grey.png"))
        .unwrap();
    assert!(matches!(
        grey.source,
        ImageSource::Pixels {
            channels: 1,
            width: 16,
            height: 16,
            ..
        }
    ));

    let cfg = LoaderConfig {
        batch_size: 5,
        input_size: 12,
        ..LoaderConfig::default()
    };
    let mut batches = eval_batches(&dataset, &cfg);
    let sizes: Vec<usize> = batches.by_ref().map(|b| b.unwrap().n).collect();
    assert_eq!(sizes, [4, 3]);
    assert_eq!(batches.skipped().count, 1);
}
