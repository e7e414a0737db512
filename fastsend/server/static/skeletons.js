// Skeletons: which keypoints a pose's lines join. The v2 wire format gives a detection's keypoints
// as {id, x, y} and no edges, so the page recognises a known keypoint set by its class and ids.

// COCO's 17 person keypoints, in the order pose models number them (id = index) …
const COCO_KEYPOINTS = [
  "nose", "left_eye", "right_eye", "left_ear", "right_ear",
  "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
  "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
];
// … and the 19 limbs of the COCO keypoint annotations' skeleton.
const COCO_LIMBS = [
  ["left_ankle", "left_knee"], ["left_knee", "left_hip"], ["right_ankle", "right_knee"],
  ["right_knee", "right_hip"], ["left_hip", "right_hip"], ["left_shoulder", "left_hip"],
  ["right_shoulder", "right_hip"], ["left_shoulder", "right_shoulder"], ["left_shoulder", "left_elbow"],
  ["right_shoulder", "right_elbow"], ["left_elbow", "left_wrist"], ["right_elbow", "right_wrist"],
  ["left_eye", "right_eye"], ["nose", "left_eye"], ["nose", "right_eye"], ["left_eye", "left_ear"],
  ["right_eye", "right_ear"], ["left_ear", "left_shoulder"], ["right_ear", "right_shoulder"],
];

/** The COCO person skeleton as [id, id] pairs. */
export const COCO_SKELETON = COCO_LIMBS.map(([a, b]) => [COCO_KEYPOINTS.indexOf(a), COCO_KEYPOINTS.indexOf(b)]);

const COCO_LAST_ID = COCO_KEYPOINTS.length - 1;

/**
 * The skeleton of each keypoint class in an image entry's `keypoints` list: a Map from class name
 * to [id, id] pairs; a class missing from it is drawn as dots.
 *
 * A class is COCO's person when every id its detections use is one of COCO's 0–16 and either it
 * is called "person" (any case; pose models may leave out keypoints they did not find) or one of
 * its detections has id 16, the last (a full set of 17).
 */
export function skeletonsByClass(detections) {
  const idsByClass = new Map();
  for (const detection of detections ?? []) {
    const ids = idsByClass.get(detection.class) ?? [];
    for (const point of detection.keypoints ?? []) ids.push(point.id);
    idsByClass.set(detection.class, ids);
  }
  const skeletons = new Map();
  for (const [name, ids] of idsByClass) {
    const allCoco = ids.every((id) => Number.isInteger(id) && id >= 0 && id <= COCO_LAST_ID);
    const person = String(name).toLowerCase() === "person" || ids.includes(COCO_LAST_ID);
    if (ids.length && allCoco && person) skeletons.set(name, COCO_SKELETON);
  }
  return skeletons;
}

/** A keypoint at exactly (0, 0) is how pose models mark one they did not find: it is not drawn. */
export function isFound(point) {
  return Number.isFinite(point.x) && Number.isFinite(point.y) && !(point.x === 0 && point.y === 0);
}
