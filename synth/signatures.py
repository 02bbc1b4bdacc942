"""What each finding looks like in the synthetic studies: one sentence per code, for the README
and for anyone judging whether a model learnt the finding or a shortcut."""

from __future__ import annotations

FINDING_SIGNATURES: dict[str, str] = {
    "ich_any": "Positive exactly when a hemorrhage is drawn (IPH, IVH, SAH, any subdural, "
    "epidural, hemorrhagic transformation, contusion, DAI); forced alone, a small 6-10 mm "
    "+60..75 HU focus in the hemispheric white matter.",
    "intraparenchymal_hemorrhage": "Lobulated +60..80 HU clot with a thin hypodense edema rim, "
    "in the basal ganglia/thalamus (60%) or lobar white matter; 12-22 mm, or 32-48 mm when it "
    "causes the mass effect.",
    "intraventricular_hemorrhage": "+55..75 HU blood layering with a straight level in the "
    "dependent (posterior) occipital horns, or casting one lateral ventricle, sometimes in the "
    "third and fourth ventricles.",
    "subarachnoid_hemorrhage": "+55..75 HU blood replacing CSF in the basal cisterns, sylvian and "
    "anterior interhemispheric fissures (aneurysmal pattern) or in the sulci over one convexity "
    "(traumatic pattern).",
    "subdural_hematoma_acute": "Crescent of +62..80 HU blood along the convexity, long and "
    "tapering with a concave inner margin, the cortex pushed in under it; 4-7 mm thick, 11-18 "
    "mm with mass effect.",
    "subdural_hematoma_subacute": "Convexity crescent of +33..42 HU, isodense to cortex: seen as a "
    "band without sulci that pushes the grey-white junction and the sulci away from the skull.",
    "subdural_hematoma_chronic": "Hypodense +12..22 HU convexity crescent, often with a denser "
    "(+30..40 HU) dependent posterior layer of settled blood; up to 20 mm thick.",
    "epidural_hematoma": "Biconvex lens of +58..85 HU blood with steep margins over a short arc "
    "at the impact site (often under a fracture), sometimes with a less dense swirl inside.",
    "hemorrhagic_transformation": "Patchy, partly gyriform +55..70 HU blood in the cortex inside "
    "the infarcted territory (a wedge of petechial blood when drawn without an infarct).",
    "extra_axial_collection": "Positive with any subdural, epidural or hygroma; alone, a thin "
    "(3-5 mm) +12..22 HU fluid collection along one side of the falx.",
    "acute_territorial_infarct": "Ill-defined wedge of low density (white matter -7..10 HU, "
    "sulci swallowed) in an MCA, ACA or PCA territory, part of it or all with mass effect.",
    "early_ischemic_change": "Loss of grey-white differentiation: cortex and basal ganglia in "
    "part of an MCA territory fall to white-matter density, without frank hypodensity.",
    "hyperdense_artery_sign": "A 3-4 mm wide +60..75 HU linear density along the M1 segment of "
    "the middle cerebral artery, from the suprasellar cistern into the sylvian fissure.",
    "subacute_infarct": "Sharply marginated, markedly hypodense (white matter -11..15 HU) wedge "
    "in a vascular territory with the sulci preserved.",
    "acute_lacunar_infarct": "A single ill-defined 7-12 mm hypodensity centred in the basal "
    "ganglia or thalamus, reaching into the adjacent internal capsule.",
    "cerebellar_infarct": "Hypodense (white matter -7..10 HU) region in the inferior posterior "
    "part of one cerebellar hemisphere (PICA territory).",
    "brainstem_infarct": "Small paramedian pontine hypodensity sharply bounded by the midline.",
    "hypoxic_ischemic_injury": "Global loss of supratentorial grey-white differentiation and "
    "hypodensity, with cerebellum and brainstem spared so they look relatively dense (reversal "
    "sign).",
    "dense_venous_sinus": "+70..90 HU thrombosed dural sinus: the triangular superior sagittal "
    "sinus at the posterior vertex, or a transverse sinus along the occipital inner table.",
    "calvarial_fracture": "A 1.3-2.2 mm lucent line through the full skull thickness at the "
    "impact site, running craniocaudally (visible in a bone window).",
    "depressed_skull_fracture": "A plate of skull broken out (its place soft-tissue density) and "
    "pushed 5-9 mm in below the inner table, into the brain.",
    "skull_base_fracture": "A lucent line through the petrous temporal bone and mastoid, or "
    "through the sphenoid/clivus.",
    "facial_orbital_fracture": "A break in the lateral orbital wall, the orbital floor/medial "
    "wall, or the anterior maxillary sinus wall.",
    "cerebral_contusion": "Clustered 5-10 mm +55..75 HU foci in hypodense, edematous cortex at "
    "a frontal (orbitofrontal) or temporal pole.",
    "diffuse_axonal_injury": "Several tiny (3-5 mm) +60..80 HU foci at the grey-white junction, "
    "in the splenium of the corpus callosum and sometimes the dorsal midbrain, without edema.",
    "pneumocephalus": "Air bubbles (-1000..-850 HU), one larger, in the non-dependent frontal "
    "extra-axial space and sulci.",
    "scalp_hematoma": "A lentiform +50..75 HU swelling of the scalp, 8-16 mm thick, bulging "
    "outwards at the impact site.",
    "penetrating_foreign_body": "A saturating metal track (3071 HU) entering through a skull "
    "defect 20-40 mm into the brain, with radiating bright and dark streaks on its slices.",
    "sinus_air_fluid_level": "Fluid (+15..35 HU) in the dependent posterior part of a maxillary or "
    "the sphenoid sinus, with a straight air-fluid level.",
    "intra_axial_mass": "Lobulated hemispheric mass: a thick +40..46 HU irregular rim around a "
    "necrotic +14..20 HU centre, or solid hyperdense +45..52 HU; 18-30 mm, 36-50 mm with mass "
    "effect.",
    "extra_axial_mass": "Meningioma: a dural-based hyperdense (+45..60 HU) dome on the inner table "
    "with a CSF cleft, speckled calcification in some and sclerosis of the overlying bone.",
    "multiple_lesions": "Three to five small (8-15 mm) ring lesions (+40..46 HU rim, +22..28 HU "
    "centre) at the grey-white junction of both hemispheres.",
    "vasogenic_edema": "Finger-like white-matter hypodensity (white matter -10..13 HU) sparing "
    "the cortex, around each mass or abscess (or in a lobe when alone).",
    "sellar_suprasellar_mass": "A +40..50 HU mass expanding the sella and filling the "
    "suprasellar cistern, with a calcified rim in some (craniopharyngioma).",
    "posterior_fossa_mass": "Cerebellar mass: a CSF-like cyst with a +40..48 HU mural nodule, or "
    "a solid +40..48 HU mass, 24-34 mm.",
    "colloid_cyst": "Round +55..70 HU 8-13 mm lesion at the foramen of Monro, between the "
    "frontal horns.",
    "calvarial_lesion": "A round 12-20 mm lytic lesion: bone replaced by +40..55 HU soft tissue "
    "through the skull thickness.",
    "arachnoid_cyst": "Sharply marginated CSF-density ovoid cyst in the anterior middle cranial "
    "fossa, displacing the temporal lobe.",
    "midline_shift": "The septum, lateral and third ventricles and deep structures warped 4-8 mm "
    "(9-13 mm with subfalcine herniation) away from the lesion side, the falx staying anchored.",
    "mass_effect": "Effaced sulci and subarachnoid space over the hemisphere of the lesion and a "
    "compressed ipsilateral lateral ventricle (folia and cisterna magna in the posterior fossa).",
    "subfalcine_herniation": "An extra anterior shift: the cingulate region and frontal horn "
    "pushed under the falx across the midline.",
    "transtentorial_herniation": "Medial temporal lobe (uncus) bulging into the suprasellar and "
    "ambient cisterns, the midbrain pushed across and narrowed, the opposite ambient cistern "
    "widened.",
    "tonsillar_herniation": "Cerebellar tonsils filling the foramen magnum around the medulla "
    "down to C1, the cisterna magna effaced.",
    "effaced_basal_cisterns": "Suprasellar, perimesencephalic, quadrigeminal, prepontine cisterns "
    "and cisterna magna filled with brain density instead of CSF.",
    "diffuse_cerebral_edema": "All sulci, the subarachnoid space and the sylvian fissures "
    "effaced, slit-like lateral ventricles, and reduced grey-white contrast.",
    "acute_hydrocephalus": "Lateral ventricles about twice normal with ballooned frontal horns and "
    "dilated temporal horns, an enlarged third ventricle, periventricular hypodensity "
    "(transependymal flow) and effaced sulci.",
    "trapped_ventricle": "One lateral ventricle (opposite the lesion) dilated, especially its "
    "atrium, occipital and temporal horns, the other normal or compressed.",
    "fourth_ventricle_compression": "The fourth ventricle reduced to a small displaced slit.",
    "ventriculomegaly": "Lateral, third and fourth ventricles enlarged (lateral about 1.75x) with "
    "normal sulci and no periventricular hypodensity.",
    "chiari_malformation": "Peg-like cerebellar tonsils extending 10-15 mm below the foramen "
    "magnum into the cervical canal, no cisterna magna, a syrinx in the cervical cord.",
    "congenital_malformation": "Callosal agenesis: widely spaced parallel lateral ventricles, "
    "dilated occipital horns (colpocephaly), a high third ventricle open to the interhemispheric "
    "fissure.",
    "global_atrophy": "Widened sulci and sylvian fissures everywhere, a wider subarachnoid space "
    "and mildly enlarged ventricles (ex vacuo).",
    "focal_atrophy": "Sulcal and subarachnoid widening confined to one frontal or temporal lobe "
    "(with a larger temporal horn when temporal).",
    "cerebellar_atrophy": "Widened cerebellar fissures and pericerebellar CSF, enlarged fourth "
    "ventricle.",
    "small_vessel_disease": "Symmetric periventricular caps and patchy confluent hypodensity of "
    "the deep white matter (white matter -6..9 HU).",
    "chronic_infarct": "CSF-density, sharply marginated wedge in a vascular territory with a "
    "gliotic rim and ex vacuo enlargement of the adjacent lateral ventricle.",
    "chronic_lacunar_infarcts": "Two to five small (5-9 mm) sharply defined CSF-density foci in "
    "the basal ganglia, thalami and deep white matter.",
    "encephalomalacia": "Irregular CSF-density tissue loss with a gliotic rim at a frontal or "
    "temporal pole (post-traumatic pattern, not a territory).",
    "vascular_calcification": "Dense (+250..600 HU) calcification of both carotid siphons beside "
    "the sella, sometimes of the basilar artery.",
    "postoperative_changes": "Craniotomy: a bone flap outlined by saw-cut gaps, burr holes at its "
    "edge, and thickened scalp over it.",
    "shunt_catheter": "A 2.6-3.4 mm +400..900 HU tube from a frontal burr hole (with a reservoir "
    "under the scalp) through the brain to the tip in the frontal horn.",
    "empty_sella": "The pituitary fossa filled with CSF, the gland a thin layer on its floor.",
    "subdural_hygroma": "Bifrontal crescents of CSF density (0..8 HU) under the inner table.",
    "pathologic_calcification": "Bilateral symmetric pallidal calcification (+180..380 HU), or two "
    "to five punctate calcified granulomas.",
    "infection_abscess": "Round lesion with a thin smooth +37..42 HU rim and a +10..18 HU pus "
    "centre, 16-26 mm (30-40 mm with mass effect).",
    "vascular_malformation": "AVM: a 24-34 mm tangle of serpiginous +52..64 HU vessels, with a few "
    "calcified foci in some.",
    "posterior_reversible_edema": "Bilateral, symmetric parieto-occipital subcortical white-matter "
    "hypodensity.",
    "orbital_abnormality": "Proptosis: a retrobulbar +40..55 HU mass in the orbital fat pushing "
    "the globe 5-8 mm forwards.",
    "craniocervical_junction_abnormality": "The dens displaced back from the C1 anterior arch and "
    "up into the foramen magnum, indenting the cord (atlantoaxial instability, basilar "
    "invagination).",
    "paranasal_sinus_disease": "Mucosal thickening (+25..40 HU) lining the maxillary sinus walls "
    "without a level, or opacified ethmoid air cells.",
    "mastoid_opacification": "Mastoid air cells filled with +20..40 HU fluid on one or both sides.",
    "incidental_cyst": "Pineal cyst: a round 9-14 mm CSF-density lesion behind the third "
    "ventricle.",
    "scalp_soft_tissue_mass": "A round, well-defined 14-26 mm +30..48 HU nodule bulging from the "
    "scalp.",
    "artifact_limited_study": "Patient motion over 35-60% of the slices: a displaced ghost of the "
    "head, straight streaks across the slice and 2.5-3.5x the noise.",
    "incomplete_coverage": "Scan range 25-35 mm too low (vertex cut off, top slices through the "
    "brain) or too high (empty slices above the head, posterior fossa and skull base missing).",
}
